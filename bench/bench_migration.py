"""Benchmark: migrating an archive in from a local Orthanc (Debian's package) by C-GET, C-MOVE or WADO-RS.

One command, e.g. the issue's target (10,000 instances, each method, then a kill -9 of the worker):

    .venv/bin/python bench/bench_migration.py --instances 10000 --studies 100 --methods C-GET,C-MOVE,WADO-RS
    .venv/bin/python bench/bench_migration.py --instances 10000 --studies 100 --methods C-GET --kill-worker

Orthanc is filled over its REST API (0.5 MB CT slices made in memory, posted by 4 threads), then for each
method a new clinic's migration job pulls everything in against PostgreSQL (BENCH_DATABASE_URL, default
.../portal_bench_migration, dropped and made again), with encryption and the local stores. By default the
job runs in this process (the service the Celery task calls, slice after slice; C-MOVE arrives at a DIMSE
listener started here). ``--kill-worker`` runs it in a real Celery worker instead (BENCH_BROKER_URL, a
Redis database of its own, default redis://127.0.0.1:6379/15, flushed), kills the worker with SIGKILL once
``--kill-at`` of the instances are in, lets its lease go stale, has the sweep re-queue the job, starts a
new worker and waits for the end. Every run prints instances per second, and the instances missing
(listed by Orthanc, not in the clinic) and duplicated (the same SOP Instance UID indexed twice, or an
object written twice) afterwards. ``--profile`` prints where the CPU time of the portal's side goes
(cProfile by thread CPU time over the threads that receive and ingest) and Orthanc's CPU time per
instance: wall-clock time on a loaded machine says little.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/portal_bench_migration"
DEFAULT_BROKER = "redis://127.0.0.1:6379/15"
STALE_SECONDS = 5
METHODS = ("C-GET", "C-MOVE", "WADO-RS")
LOCAL_SOURCE_NETWORKS = "127.0.0.0/8"


def _orthanc_fill(orthanc, template: Path, *, instances: int, studies: int) -> float:
    """Post ``instances`` CT slices in ``studies`` studies to Orthanc; return the seconds it took."""
    import requests
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    base = dcmread(template)
    per_study = max(1, instances // studies)
    jobs = [(generate_uid(), generate_uid(), per_study) for _ in range(studies)]
    local = threading.local()

    def post_study(job: tuple[str, str, int]) -> None:
        study_uid, series_uid, count = job
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        ds = copy.deepcopy(base)  # one per thread: a shallow copy shares its elements
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        for number in range(count):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = number + 1
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            response = session.post(f"{orthanc.url}/instances", data=buffer.getvalue(), timeout=120)
            response.raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(post_study, jobs))
    return time.perf_counter() - started


def _orthanc_uids(orthanc) -> set[str]:
    """Every SOP Instance UID Orthanc holds (one find per study, not one request per instance)."""
    uids: set[str] = set()
    for study in orthanc.get("/studies"):
        for instance in orthanc.get(f"/studies/{study}/instances"):
            uids.add(instance["MainDicomTags"]["SOPInstanceUID"])
    return uids


def _process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _ThreadProfiles:
    """cProfile, by thread CPU time, of every thread that runs ``target`` (pynetdicom's association threads,
    the migration's association threads); merged at the end."""

    def __init__(self) -> None:
        import cProfile

        self.cprofile = cProfile
        self.profiles: list = []
        self.lock = threading.Lock()

    def wrap(self, owner: object, name: str) -> None:
        real = getattr(owner, name)

        def profiled(*args, **kwargs):
            profile = self.cprofile.Profile(time.thread_time)
            with self.lock:
                self.profiles.append(profile)
            profile.enable()
            try:
                return real(*args, **kwargs)
            finally:
                profile.disable()

        setattr(owner, name, profiled)

    def print(self, instances: int) -> None:
        import pstats

        if not self.profiles:
            return
        stats = pstats.Stats(*self.profiles)
        total = stats.total_tt
        print(f"  profiled threads: {total:.1f} s CPU = {1000 * total / max(instances, 1):.1f} ms per instance")
        stats.sort_stats("cumulative").print_stats(30)
        stats.sort_stats("tottime").print_stats(20)


def _worker_env(database_url: str, broker: str, var_dir: Path) -> dict[str, str]:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings", "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker, "PORTAL_VAR_DIR": str(var_dir), "LOG_LEVEL": "WARNING",
            "OUTBOUND_JOB_STALE_SECONDS": str(STALE_SECONDS), "REPLICATION_MODE": "async",
            "DICOMWEB_SOURCE_ALLOWED_NETWORKS": LOCAL_SOURCE_NETWORKS,
            "DICOM_NODE_ALLOWED_NETWORKS": LOCAL_SOURCE_NETWORKS}


def _worker_start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    celery = Path(sys.executable).with_name("celery")
    process = subprocess.Popen(
        [str(celery), "-A", "portal", "worker", "-Q", "celery", "--concurrency=2", "--loglevel=INFO",
         "--without-mingle", "--without-gossip", "-n", f"bench-migration-{os.getpid()}@%h"],
        cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while b"ready." not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the Celery worker did not start; see {log}")
        time.sleep(0.2)
    return process


def _worker_kill(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGKILL)  # the whole worker, pool children too: no clean shutdown
    process.wait(10)


def _run_in_worker(job, *, env: dict[str, str], log: Path, kill_at: float | None) -> tuple[float, int]:
    """Queue the job to a real worker (killed once when ``kill_at`` of it is in); return (seconds, at kill)."""
    from studies.models import Instance
    from studies.outbound import services
    from studies.outbound.models import JobStatus, MigrationJob

    worker = _worker_start(env, log)
    at_kill = 0
    try:
        started = time.perf_counter()
        services.job_enqueue(job=job)
        total = None
        while True:
            job.refresh_from_db()
            if job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
                break
            total = total or job.instances_total
            if kill_at is not None and not at_kill and total:
                stored = Instance.objects.for_clinic(job.clinic_id).count()
                if stored >= kill_at * total:
                    _worker_kill(worker)
                    at_kill = Instance.objects.for_clinic(job.clinic_id).count()
                    print(f"  kill -9 of the worker with {at_kill} of {total} instances in")
                    time.sleep(STALE_SECONDS + 1)  # the dead worker's lease goes stale
                    MigrationJob.objects.filter(pk=job.pk).update(queued_at=None)  # its message was in flight
                    print(f"  sweep re-queued {services.outbound_sweep()['migrations']} migration(s); new worker")
                    worker = _worker_start(env, log)
            time.sleep(0.5)
        return time.perf_counter() - started, at_kill
    finally:
        if worker.poll() is None:
            _worker_kill(worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--methods", default="C-GET", help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--associations", type=int, default=None, help="per job (default: the job's default)")
    parser.add_argument("--kill-worker", action="store_true", help="run in a Celery worker and kill -9 it once")
    parser.add_argument("--kill-at", type=float, default=0.4, help="fraction of the instances in at the kill")
    parser.add_argument("--profile", action="store_true", help="print where the CPU time goes")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if any(m not in METHODS for m in methods):
        parser.error(f"methods are {', '.join(METHODS)}")
    work = Path(tempfile.mkdtemp(prefix="bench-migration-"))
    sys.path.insert(0, str(ROOT))
    from bench.bench_anonymize import ct_files
    from bench.common import django_setup

    database_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB)
    broker = os.environ.get("BENCH_BROKER_URL", DEFAULT_BROKER)
    if args.kill_worker:
        import redis

        redis.Redis.from_url(broker).flushdb()  # the benchmark's own Redis database: no old messages
        os.environ["OUTBOUND_JOB_STALE_SECONDS"] = str(STALE_SECONDS)
    # The private Orthanc listens on 127.0.0.1, an internal address a DICOMweb source or a DICOM node may have
    # only if allowed.
    os.environ["DICOMWEB_SOURCE_ALLOWED_NETWORKS"] = LOCAL_SOURCE_NETWORKS
    os.environ["DICOM_NODE_ALLOWED_NETWORKS"] = LOCAL_SOURCE_NETWORKS
    django_setup(database_url, str(work / "var"), broker if args.kill_worker else "memory://")
    import pynetdicom.association
    from django.db.models import Count

    from studies.dimse import nodes
    from studies.dimse.scp import scp_start
    from studies.models import Instance
    from studies.outbound import services
    from studies.outbound.models import MigrationJob
    from tenants.models import Clinic
    from tests.peers import free_tcp_port, running_orthanc

    batches: list[int] = []  # sizes of the instances_ingest calls the migration made
    real_ingest = services.instances_ingest

    def counted_ingest(**kwargs):
        batches.append(len(kwargs["paths"]))
        return real_ingest(**kwargs)

    services.instances_ingest = counted_ingest
    profiles = _ThreadProfiles() if args.profile else None
    if profiles is not None:
        profiles.wrap(pynetdicom.association.Association, "run")  # C-GET: receive + ingest, per association
        profiles.wrap(services, "_migration_association")  # WADO-RS: retrieve + ingest, per association
    template = ct_files(1, work)[0]
    scp_port = free_tcp_port()
    # C-MOVE's destination: Orthanc knows every benchmark clinic's AE title as this listener.
    server = scp_start(host="127.0.0.1", port=scp_port, ae_title="PACSPORTAL", block=False)
    modalities = {f"bench{n}": (f"BENCH{n}", "127.0.0.1", scp_port) for n in range(len(methods))}
    results = []
    with running_orthanc(work / "orthanc", modalities=modalities) as orthanc:
        seconds = _orthanc_fill(orthanc, template, instances=args.instances, studies=args.studies)
        source_uids = _orthanc_uids(orthanc)
        print(f"filled Orthanc with {len(source_uids)} instances in {seconds:.1f} s "
              f"({len(source_uids) / seconds:.0f} instances/s)")
        for number, method in enumerate(methods):
            clinic = Clinic.objects.create(name=f"Bench {method}", slug=f"bench-{number}", ae_title=f"BENCH{number}",
                                           quota_bytes=10**13)
            # Made directly (not by migration_create, which queues it at once): started below.
            options: dict[str, object] = {"method": method}
            if args.associations is not None:
                options["associations"] = args.associations
            if method == "WADO-RS":
                job = MigrationJob.objects.create(clinic=clinic, dicomweb_url=f"{orthanc.url}/dicom-web", **options)
            else:
                node = nodes.dicom_node_create(clinic=clinic, ae_title=orthanc.ae_title, host="127.0.0.1",
                                               port=orthanc.dicom_port)
                job = MigrationJob.objects.create(clinic=clinic, node=node, **options)
            orthanc_cpu, own_cpu = _process_cpu(orthanc.process.pid), time.process_time()
            batches.clear()
            at_kill = 0
            if args.kill_worker:
                elapsed, at_kill = _run_in_worker(job, env=_worker_env(database_url, broker, work / "var"),
                                                  log=work / "worker.log", kill_at=args.kill_at)
            else:
                started = time.perf_counter()
                while services.migration_run(job=job, slice_seconds=3600):
                    job.refresh_from_db()
                elapsed = time.perf_counter() - started
            orthanc_cpu, own_cpu = _process_cpu(orthanc.process.pid) - orthanc_cpu, time.process_time() - own_cpu
            job.refresh_from_db()
            ours = Instance.objects.for_clinic(clinic)
            stored = set(ours.values_list("sop_instance_uid", flat=True))
            doubled_uids = ours.values("sop_instance_uid").annotate(n=Count("pk")).filter(n__gt=1).count()
            doubled_objects = ours.count() - ours.values("object_key").distinct().count()
            missing = len(source_uids - stored)
            speed = job.instances_done / elapsed
            load = os.getloadavg()[0]
            results.append((method, job.instances_done, elapsed, speed, missing, doubled_uids + doubled_objects,
                            at_kill, load))
            print(f"{method}: {job.instances_done} instances in {elapsed:.1f} s = {speed:.1f} instances/s "
                  f"({job.associations} associations); status {job.status}, missing {missing}, "
                  f"duplicates {doubled_uids + doubled_objects}"
                  f"{f', killed at {at_kill}' if args.kill_worker else ''}; load average {load:.1f}")
            print(f"  CPU per instance: Orthanc {1000 * orthanc_cpu / max(job.instances_done, 1):.1f} ms, "
                  f"this process {1000 * own_cpu / max(job.instances_done, 1):.1f} ms"
                  f"{' (the worker ran it)' if args.kill_worker else ''}")
            if batches:
                print(f"  ingest batches: {len(batches)}, mean {sum(batches) / len(batches):.1f} instances, "
                      f"largest {max(batches)}")
            if profiles is not None:
                profiles.print(job.instances_done)
                profiles.profiles.clear()
    server.shutdown()
    print("\nmethod   instances  seconds  instances/s  missing  duplicates  load")
    for method, done, elapsed, speed, missing, doubled, _at_kill, load in results:
        print(f"{method:8} {done:9} {elapsed:8.1f} {speed:12.1f} {missing:8} {doubled:11} {load:5.1f}")
    if any(missing or doubled for _m, _d, _e, _s, missing, doubled, _k, _l in results):
        sys.exit(1)


if __name__ == "__main__":
    main()

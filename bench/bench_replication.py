"""Benchmark: replication lag while STOW-RS ingests at full speed, the portal started as an operator runs it.

Starts, in a scratch folder: a moto S3 server (the replica bucket; ``S3_PORT`` or a free port), the portal
as ``make run`` does (gunicorn 2 workers x 4 threads, a real ``celery -A portal worker --concurrency 2``
and ``celery -A portal beat``, the file broker, SQLite, encryption on, ``REPLICATION_MODE=async``, the
primary store a local folder, the replica in S3). ``--broker-url redis://...`` uses Redis instead of the
file broker, ``--database-url postgres://...`` PostgreSQL (that database is dropped and re-created),
``--primary-s3`` puts the primary store in the moto server too. Then two phases, each with its own studies:

1. Worker stopped: STOW-RS at full speed (4 clients, 10 instances per request): ingest alone. Then the
   worker starts and drains that backlog: replication alone (instances/s, worker CPU per instance).
2. Worker running: STOW-RS at full speed again. For every instance, the lag from its acknowledgement (the
   client's receipt of the 200 answer of its request) to its replica object being durable
   (``Instance.replicated_at``, set once the replica's PUT has returned) and from its index commit
   (``stored_at``); the backlog (pending instances) sampled every 0.5 s; after the last answer, the time
   until nothing is pending (drain); ingest throughput against phase 1's.

Run: ``.venv/bin/python bench/bench_replication.py [--instances 3000] [--broker-url redis://127.0.0.1:6379/8]
[--database-url postgres://.../portal_bench_replication] [--primary-s3] [--large] [--skip-baseline]``.
Data: pydicom's CT_small (39 kB) with fresh UIDs, 100 per study; ``--large`` 512 x 512 CT (0.53 MB).
CPU seconds are read from /proc per process tree (web, worker, beat, moto), which a loaded machine
distorts far less than the wall clock. The moto server is Python on the same 2 cores: a real S3
endpoint would take its CPU elsewhere. It listens on ``S3_PORT`` when set: not while tests use that port.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_dicomweb import BOUNDARY, percentile, wait_for  # noqa: E402
from bench.bench_orthanc import free_port  # noqa: E402
from bench.common import ct_series_write, database_recreate, process_tree_cpu_seconds  # noqa: E402

BUCKET = "bench-replica"
PRIMARY_BUCKET = "bench-primary"


def make_files(folder: Path, count: int, *, large: bool, tag: str) -> list[tuple[Path, str]]:
    """``count`` CT instances (100 per study) and their SOP Instance UIDs."""
    return ct_series_write(folder, count, patient_prefix=f"REPL-{tag}", large=large)


def stow_timed(base: str, headers: dict[str, str], files: list[tuple[Path, str]], batch: int,
               clients: int) -> tuple[dict[str, float], float]:
    """POST the files, ``clients`` requests at a time; the acknowledgement time (epoch) of every SOP UID."""
    content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    acked: dict[str, float] = {}
    local = threading.local()

    def post(chunk: list[tuple[Path, str]]) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        body = b"".join(
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
            for p, _ in chunk
        ) + f"--{BOUNDARY}--\r\n".encode()
        response = session.post(f"{base}/studies", data=body, timeout=600, headers={
            **headers, "Content-Type": content_type, "Accept": "application/dicom+json"})
        now = time.time()
        if response.status_code != 200:
            raise RuntimeError(f"STOW-RS answered {response.status_code}: {response.text[:300]}")
        for _, sop_uid in chunk:
            acked[sop_uid] = now

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(post, [files[i : i + batch] for i in range(0, len(files), batch)]))
    return acked, time.perf_counter() - started


class Sampler(threading.Thread):
    """Pending (not yet replicated) instances of the clinic, every ``interval`` seconds."""

    def __init__(self, clinic_id: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.clinic_id = clinic_id
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (monotonic, stored, pending)
        self.stopping = threading.Event()

    def counts(self) -> tuple[int, int]:
        from studies.models import Instance

        rows = Instance.objects.for_clinic(self.clinic_id)
        return rows.count(), rows.filter(replicated_at=None).count()

    def run(self) -> None:
        from django.db import connection

        try:
            while not self.stopping.is_set():
                stored, pending = self.counts()
                self.samples.append((time.monotonic(), stored, pending))
                self.stopping.wait(self.interval)
        finally:
            connection.close()


class Portal:
    """moto, gunicorn, the Celery worker and beat, in their own process groups; CPU seconds per tree."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work = work
        self.args = args
        self.processes: dict[str, subprocess.Popen] = {}
        self.s3_port = int(os.environ.get("S3_PORT") or free_port())
        self.http_port = free_port()
        var = work / "var"
        var.mkdir()
        endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "PORTAL_VAR_DIR": str(var),
            "DATABASE_URL": args.database_url or f"sqlite:///{var / 'portal.sqlite3'}",
            "PRIMARY_STORE_URL": (
                f"s3://{PRIMARY_BUCKET}?endpoint_url={endpoint}&region_name=us-east-1" if args.primary_s3
                else (var / "primary").as_uri()
            ),
            "REPLICA_STORE_URL": f"s3://{BUCKET}?endpoint_url={endpoint}&region_name=us-east-1",
            "PRIMARY_STORE_ACCESS_KEY_ID": "bench", "PRIMARY_STORE_SECRET_ACCESS_KEY": "bench",
            "REPLICA_STORE_ACCESS_KEY_ID": "bench", "REPLICA_STORE_SECRET_ACCESS_KEY": "bench",
            "REPLICATION_MODE": "async",
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        if args.broker_url:
            self.env["CELERY_BROKER_URL"] = args.broker_url
        else:
            self.env.pop("CELERY_BROKER_URL", None)
            self.env.pop("REDIS_URL", None)

    def log(self, name: str):  # type: ignore[no-untyped-def]
        return (self.work / f"{name}.log").open("ab")

    def spawn(self, name: str, command: list[str]) -> None:
        self.processes[name] = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=self.log(name),
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)

    def cpu(self, name: str) -> float:
        process = self.processes.get(name)
        return process_tree_cpu_seconds(process.pid) if process is not None else 0.0

    def start_moto(self) -> None:
        import boto3

        self.spawn("moto", [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                            "-p", str(self.s3_port)])
        wait_for(f"http://127.0.0.1:{self.s3_port}/moto-api/")
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.s3_port}", region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench")
        for bucket in (BUCKET, PRIMARY_BUCKET):
            client.create_bucket(Bucket=bucket)

    def prepare(self) -> tuple[str, str, int]:
        """Migrate, make a clinic and an API token: (slug, token, clinic id)."""
        manage = [sys.executable, str(ROOT / "manage.py")]
        if self.args.database_url:
            database_recreate(self.args.database_url)
        subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=self.env, check=True)
        slug = f"repl-{uuid.uuid4().hex[:6]}"
        setup = (
            "from tenants import services; from tenants.models import Clinic, User; "
            f"owner = User.objects.create_user('{slug}@example.org', '{uuid.uuid4().hex}'); "
            f"clinic = services.clinic_create(name='Bench', slug='{slug}', owner=owner); "
            "Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=10**15); "
            "print(clinic.pk, services.api_token_create(clinic=clinic, name='bench', role='owner').secret)"
        )
        out = subprocess.run([*manage, "shell", "-c", setup], cwd=ROOT, env=self.env, check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        clinic_id, token = out.split()
        return slug, token, int(clinic_id)

    def start_web(self) -> None:
        self.spawn("web", [sys.executable, "-m", "gunicorn", "portal.wsgi", "--bind", f"127.0.0.1:{self.http_port}",
                           "--workers", "2", "--threads", "4", "--timeout", "600", "--log-level", "warning"])
        wait_for(f"http://127.0.0.1:{self.http_port}/healthz")

    def start_worker(self) -> None:
        celery = str(Path(sys.executable).with_name("celery"))
        log = self.work / "worker.log"
        size = log.stat().st_size if log.exists() else 0
        self.spawn("worker", [celery, "-A", "portal", "worker", f"--concurrency={self.args.concurrency}",
                              "--loglevel=INFO", "-n", f"bench-{uuid.uuid4().hex[:6]}@%h"])
        deadline = time.monotonic() + 120
        while b"ready." not in log.read_bytes()[size:]:
            if time.monotonic() > deadline:
                raise RuntimeError("the Celery worker did not start; see worker.log")
            time.sleep(0.2)

    def start_beat(self) -> None:
        celery = str(Path(sys.executable).with_name("celery"))
        self.spawn("beat", [celery, "-A", "portal", "beat", "--loglevel=WARNING",
                            "-s", str(self.work / "celerybeat-schedule")])

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)


def lags(clinic_id: int, acked: dict[str, float]) -> dict[str, list[float]]:
    """Per instance: replicated_at - acknowledgement, and replicated_at - stored_at (seconds)."""
    from studies.models import Instance

    from_ack, from_commit = [], []
    rows = Instance.objects.for_clinic(clinic_id).filter(sop_instance_uid__in=list(acked), replicated_at__isnull=False)
    for sop_uid, stored_at, replicated_at in rows.values_list("sop_instance_uid", "stored_at", "replicated_at"):
        from_ack.append(replicated_at.timestamp() - acked[sop_uid])
        from_commit.append((replicated_at - stored_at).total_seconds())
    return {"ack": from_ack, "commit": from_commit}


def wait_drained(sampler: Sampler, expected: int, timeout: float) -> float | None:
    """Seconds until the clinic holds ``expected`` instances and none is pending; None after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        stored, pending = sampler.counts()
        if stored >= expected and pending == 0:
            return time.monotonic() - started
        time.sleep(0.2)
    return None


def summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"p50 {percentile(values, 0.5):.2f} s, p95 {percentile(values, 0.95):.2f} s, "
            f"max {max(values):.2f} s")


def run(args: argparse.Namespace, work: Path) -> dict:
    portal = Portal(work, args)
    result: dict = {"load_at_start": os.getloadavg()[0]}
    try:
        portal.start_moto()
        slug, token, clinic_id = portal.prepare()
        os.environ.update({k: v for k, v in portal.env.items() if k not in {"PYTHONPATH"}})
        import django

        django.setup()
        portal.start_web()
        portal.start_beat()
        base = f"http://127.0.0.1:{portal.http_port}/dicomweb/{slug}"
        headers = {"Authorization": f"Bearer {token}"}
        sampler = Sampler(clinic_id)
        total = 0
        if not args.skip_baseline:
            files = make_files(work / "alone", args.instances, large=args.large, tag="alone")
            web_cpu = portal.cpu("web")
            _, seconds = stow_timed(base, headers, files, args.per_request, args.clients)
            total += len(files)
            result["ingest_alone_per_s"] = len(files) / seconds
            result["ingest_alone_web_cpu_ms"] = (portal.cpu("web") - web_cpu) / len(files) * 1000
            started = time.monotonic()
            portal.start_worker()
            result["worker_start_s"] = time.monotonic() - started
            moto_cpu = portal.cpu("moto")
            drained = wait_drained(sampler, total, args.drain_timeout)
            result["replication_alone_s"] = drained
            if drained:
                result["replication_alone_per_s"] = len(files) / drained
            result["replication_alone_worker_cpu_ms"] = portal.cpu("worker") / len(files) * 1000
            result["replication_alone_moto_cpu_ms"] = (portal.cpu("moto") - moto_cpu) / len(files) * 1000
        else:
            portal.start_worker()
        files = make_files(work / "together", args.instances, large=args.large, tag="together")
        cpu = {name: portal.cpu(name) for name in ("web", "worker", "moto", "beat")}
        sampler.start()
        acked, seconds = stow_timed(base, headers, files, args.per_request, args.clients)
        last_ack = time.monotonic()
        total += len(files)
        result["ingest_with_replication_per_s"] = len(files) / seconds
        drained = wait_drained(sampler, total, args.drain_timeout)
        sampler.stopping.set()
        sampler.join()
        result["drain_after_last_ack_s"] = drained
        for name, before in cpu.items():
            result[f"{name}_cpu_ms_per_instance"] = (portal.cpu(name) - before) / len(files) * 1000
        measured = lags(clinic_id, acked)
        result["replicated"] = f"{len(measured['ack'])} of {len(files)}"
        result["lag_from_ack"] = summary(measured["ack"])
        result["lag_from_commit"] = summary(measured["commit"])
        during = [pending for at, _, pending in sampler.samples if at <= last_ack]
        result["backlog_during_ingest"] = (
            f"median {percentile(during, 0.5)}, max {max(during)}, at the last answer {during[-1]}" if during else "n/a"
        )
        result["load_at_end"] = os.getloadavg()[0]
        result["broker"] = args.broker_url or "filesystem:// (default)"
        result["database"] = "PostgreSQL" if args.database_url else "SQLite"
        result["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        return result
    finally:
        portal.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=3000, help="instances per phase (default 3000)")
    parser.add_argument("--clients", type=int, default=4, help="STOW-RS requests in flight (default 4)")
    parser.add_argument("--per-request", type=int, default=10, help="instances per STOW-RS request (default 10)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2, as the Procfile)")
    parser.add_argument("--broker-url", default=None, help="e.g. redis://127.0.0.1:6379/8 (default: file broker)")
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL, dropped and re-created (default SQLite)")
    parser.add_argument("--primary-s3", action="store_true", help="primary store in the moto server too")
    parser.add_argument("--large", action="store_true", help="512 x 512 CT instances (0.53 MB) instead of 39 kB")
    parser.add_argument("--skip-baseline", action="store_true", help="only phase 2 (ingest with replication)")
    parser.add_argument("--drain-timeout", type=float, default=900, help="seconds to wait for the backlog")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs)")
    args = parser.parse_args()
    if args.broker_url and args.broker_url.startswith("redis"):
        import redis

        redis.Redis.from_url(args.broker_url).flushdb()  # its own database: no messages of an earlier run
    work = Path(tempfile.mkdtemp(prefix="bench-replication-"))
    try:
        result = run(args, work)
    finally:
        if args.keep:
            print(f"scratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()

"""Disaster-recovery drill: recovery time (RTO) and replication lag (RPO), sync vs async ingest.

Runs standalone and touches no other data:

    .venv/bin/python bench/dr_drill.py [--instances 10000] [--database-url postgres://.../portal_drill]
        [--broker-url redis://127.0.0.1:6379/8] [--rate 20] [--seconds 30]

With ``--database-url`` the database named there is DROPPED and re-created (give it a name of its
own); without it, SQLite in a temporary folder. Stores are local folders in a temporary folder.

1. Setup: ingest N real DICOM instances (pydicom's CT_small.dcm with fresh UIDs, 100 per study) through
   ``instance_ingest``, replicated to the replica.
2. RTO restore: primary storage is wiped; ``restore --all`` rewrites it from the replica.
3. RTO rebuild: the index (patients, studies, series, instances, clinic keys) is deleted;
   ``rebuild_index`` recreates it from the replica alone.
4. Verification throughput: ``verify_backups --all``.
5. RPO: a real Celery worker runs while uploads arrive at a steady rate; lag = replicated_at - stored_at.
6. Ingest latency with REPLICATION_MODE=async vs sync.
7. Control plane (SQLite default run): users, share links and audit entries are added next to the index,
   then ``backup_database`` (encrypted snapshot; bounds the RPO with the beat interval) and
   ``restore_database`` (the control plane's RTO) are timed, and both RTOs are extrapolated to 2 TB.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))]


def recreate_database(url: str) -> None:
    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def setup_django(var_dir: Path, database_url: str | None, broker_url: str | None) -> dict[str, str]:
    sys.path.insert(0, str(ROOT))
    env = {
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "PORTAL_VAR_DIR": str(var_dir),
        "DATABASE_URL": database_url or f"sqlite:///{var_dir / 'drill.sqlite3'}",
        "MASTER_KEYS": "drill:" + base64.b64encode(os.urandom(32)).decode(),
        "PRIMARY_STORE_URL": (var_dir / "primary").as_uri(),
        "REPLICA_STORE_URL": (var_dir / "replica").as_uri(),
        "LOG_LEVEL": "WARNING",
        "REPLICATION_MODE": "async",
        "DEFAULT_CLINIC_QUOTA_BYTES": str(10**13),
    }
    if broker_url:
        env["CELERY_BROKER_URL"] = broker_url
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return env


def make_files(folder: Path, count: int) -> list[Path]:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    template = dcmread(get_testdata_file("CT_small.dcm"))
    paths = []
    study = series = ""
    for number in range(count):
        if number % 100 == 0:
            study, series = generate_uid(), generate_uid()
        template.StudyInstanceUID = study
        template.SeriesInstanceUID = series
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        template.PatientID = f"DRILL-{number // 100}"
        template.InstanceNumber = number % 100 + 1
        path = folder / f"{number:06d}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def fast_fill(clinic, paths: list[Path], jobs: int = 4, batch: int = 500,  # type: ignore[no-untyped-def]
              sidecar_batch: int = 50) -> float:
    """Store ``paths`` (files from ``make_files``) on both stores and index them, faster than real ingest.

    Setup only, never measured: the template is parsed once and each file's parse is that result with its
    own UIDs and numbers (``make_files`` changes nothing else), so the per-file cost is encrypting and
    writing the object to both stores (REPLICATION_MODE=sync, ``jobs`` threads) plus a share of one bulk
    index write per ``batch`` files through ingest's own writer, with the quota counted as ingest does.
    Then, as the replication worker does, one index sidecar per ``sidecar_batch`` instances (the worker's
    message size, REPLICATION_BATCH; 1 is a C-STORE stream's worst case; 0 writes none).
    Returns the seconds it took.
    """
    import dataclasses
    import uuid

    from django.conf import settings
    from django.db import close_old_connections, transaction
    from pydicom import dcmread

    from studies import dicom
    from studies.archive import keys
    from studies.backup import index_sidecar
    from studies.ingest import IndexItem, hooks, instances_index_write, quota_reserve

    settings.REPLICATION_MODE = "sync"
    template = dicom.parse_instance(str(paths[0]))
    keys.clinic_key_get(clinic)  # created here, so the writer threads find it

    def parsed_of(path: Path) -> dicom.ParsedInstance:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=[
            "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID", "InstanceNumber"])
        metadata = dict(template.metadata)
        for key, value in (("0020000D", ds.StudyInstanceUID), ("0020000E", ds.SeriesInstanceUID),
                           ("00080018", ds.SOPInstanceUID), ("00100020", ds.PatientID),
                           ("00200013", int(ds.InstanceNumber))):
            metadata[key] = {**metadata[key], "Value": [value]}
        return dataclasses.replace(
            template, study_instance_uid=ds.StudyInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
            sop_instance_uid=ds.SOPInstanceUID, patient_id=ds.PatientID, instance_number=int(ds.InstanceNumber),
            metadata=metadata,
        )

    def write(path: Path) -> IndexItem:
        try:
            object_uuid = uuid.uuid4()
            with path.open("rb") as source:
                written = hooks.object_write(clinic=clinic, source=source, object_uuid=object_uuid)
            return IndexItem(parsed=parsed_of(path), stored=written.stored, instance_uuid=object_uuid,
                             replicated_at=written.replicated_at)
        finally:
            close_old_connections()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for start in range(0, len(paths), batch):
            items = list(pool.map(write, paths[start:start + batch]))
            with transaction.atomic():
                quota_reserve(clinic=clinic, size_bytes=sum(item.stored.size_bytes for item in items))
                written = instances_index_write(clinic=clinic, items=items)
            ids = [instance.pk for instance in written.instances]
            for first in range(0, len(ids), sidecar_batch) if sidecar_batch else ():
                index_sidecar.index_sidecar_publish(clinic=clinic, instance_ids=ids[first:first + sidecar_batch])
    return time.perf_counter() - started


def make_clinic(slug: str):  # type: ignore[no-untyped-def]
    from tenants import services
    from tenants.models import User

    owner = User.objects.create_user(f"owner@{slug}.example", "Drill-password-42!")
    clinic = services.clinic_create(name=f"Drill {slug}", slug=slug, owner=owner)
    type(clinic).objects.filter(pk=clinic.pk).update(quota_bytes=10**13)
    clinic.refresh_from_db()
    return clinic


def ingest_all(clinic, paths: list[Path], jobs: int) -> float:  # type: ignore[no-untyped-def]
    from django.db import close_old_connections

    from studies.ingest import instance_ingest

    def one(path: Path) -> None:
        try:
            instance_ingest(clinic=clinic, source_path=str(path))
        finally:
            close_old_connections()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, paths))
    return time.perf_counter() - started


def report(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10000)
    parser.add_argument("--database-url", help="PostgreSQL database to DROP and re-create for the drill")
    parser.add_argument("--broker-url", help="Celery broker for the RPO part (default: file broker)")
    parser.add_argument("--jobs", type=int, default=4, help="parallel setup / restore / rebuild jobs")
    parser.add_argument("--real-ingest", action="store_true",
                        help="fill with instance_ingest per file (slow) instead of the fast fill")
    parser.add_argument("--rate", type=float, default=20.0, help="uploads per second in the RPO part")
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of the RPO load")
    parser.add_argument("--mode-samples", type=int, default=200, help="uploads per mode, sync vs async")
    parser.add_argument("--users", type=int, default=1000, help="control plane: users (and share links) added")
    parser.add_argument("--instance-mb", type=float, default=0.5,
                        help="average instance size assumed when extrapolating to 2 TB (CT/MR: ~0.5 MB)")
    args = parser.parse_args()
    if args.database_url:
        recreate_database(args.database_url)

    temp = Path(tempfile.mkdtemp(prefix="dr-drill-"))
    try:
        env = setup_django(temp, args.database_url, args.broker_url)
        run(args, temp, env)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def run(args: argparse.Namespace, temp: Path, env: dict[str, str]) -> None:
    from django.conf import settings
    from django.core.management import call_command
    from django.db.models import Sum

    from portal.celery import app
    from studies.archive import keys
    from studies.backup import replication
    from studies.models import ClinicKey, Instance, Patient, Series, Study

    print(f"DR drill: {args.instances} instances, database {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}, "
          f"{os.cpu_count()} CPUs")
    clinic = make_clinic("drill")
    paths = make_files(temp / "files", args.instances)
    if args.real_ingest:
        app.conf.task_always_eager = True  # setup only: each upload replicates inline
        setup_seconds = ingest_all(clinic, paths, args.jobs)
        app.conf.task_always_eager = False
    else:
        setup_seconds = fast_fill(clinic, paths, jobs=args.jobs)
        settings.REPLICATION_MODE = "async"
    total = Instance.objects.for_clinic(clinic).count()
    replicated = Instance.objects.for_clinic(clinic).filter(replicated_at__isnull=False).count()
    size = Instance.objects.for_clinic(clinic).aggregate(total=Sum("size_bytes"))["total"] or 0
    report("Setup", [
        ("instances stored", f"{total} ({size / 1e6:.0f} MB plaintext), {replicated} replicated"),
        ("ingest + replicate" if args.real_ingest else "fast fill (not real ingest; setup only)",
         f"{setup_seconds:.1f} s ({total / setup_seconds:.0f} instances/s, {args.jobs} threads)"),
        ("load average (1 min) at start", f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"),
    ])
    snapshot = dict(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", "sha256"))
    devnull = open(os.devnull, "w")  # noqa: SIM115 - progress output is not part of the figures

    # RTO 1: primary lost, restored from the replica.
    shutil.rmtree(temp / "primary")
    started = time.perf_counter()
    call_command("restore", "--all", "--jobs", str(args.jobs), stdout=devnull)
    restore_seconds = time.perf_counter() - started

    # RTO 2: the index lost, rebuilt from the replica.
    Instance.objects.all().delete()
    Series.objects.all().delete()
    Study.objects.all().delete()
    Patient.objects.all().delete()
    ClinicKey.objects.all().delete()
    keys.key_cache_clear()
    started = time.perf_counter()
    call_command("rebuild_index", "--jobs", str(args.jobs), stdout=devnull)
    rebuild_seconds = time.perf_counter() - started
    rebuilt = dict(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", "sha256"))
    assert rebuilt == snapshot, "the rebuilt index differs from the original"

    started = time.perf_counter()
    call_command("verify_backups", "--all", stdout=devnull)
    verify_seconds = time.perf_counter() - started
    report(f"RTO for {total} instances", [
        ("restore --all (primary wiped)", f"{restore_seconds:.1f} s ({total / restore_seconds:.0f} instances/s)"),
        (f"rebuild_index --jobs {args.jobs} (database lost)",
         f"{rebuild_seconds:.1f} s ({total / rebuild_seconds:.0f} instances/s)"),
        ("both, end to end", f"{restore_seconds + rebuild_seconds:.1f} s"),
        ("verify_backups --all", f"{verify_seconds:.1f} s ({total / verify_seconds:.0f} instances/s)"),
    ])

    control_plane(args, total=total, size=size, restore_seconds=restore_seconds, rebuild_seconds=rebuild_seconds)
    # RPO: steady uploads with a running worker.
    rpo(args, temp, env, replication)
    # Sync vs async ingest.
    modes(args, temp)


def control_plane(args: argparse.Namespace, *, total: int, size: int, restore_seconds: float,
                  rebuild_seconds: float) -> None:
    from django.core.management import call_command
    from django.db import transaction

    from studies.backup import database
    from studies.models import Study
    from studies.sharing import services as sharing
    from tenants.audit import audit_record
    from tenants.models import Clinic, Membership, User
    from tenants.roles import Role

    images_2tb(args, total=total, size=size, restore_seconds=restore_seconds, rebuild_seconds=rebuild_seconds)
    if database.database_engine() != "sqlite":
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_database_size(current_database())")
            db_bytes = cursor.fetchone()[0]
        instances_2tb = 2e12 / (args.instance_mb * 1e6)
        report("Control plane (PostgreSQL: pgBackRest, not run by this drill)", [
            ("database size", f"{db_bytes / 1e6:.1f} MB ({db_bytes / max(total, 1):.0f} bytes per instance); "
             f"2 TB: ~{db_bytes / max(total, 1) * instances_2tb / 1e9:.0f} GB"),
            ("RPO control plane", "one WAL segment (archive_timeout; pgBackRest archive-push per segment)"),
            ("RTO control plane", "pgBackRest restore of the base backup + WAL replay: see "
             "tests/studies/test_backup_postgresql.py and README"),
        ])
        return
    clinic = Clinic.objects.get(slug="drill")
    studies = list(Study.objects.for_clinic(clinic)[:50])
    with transaction.atomic():
        for number in range(args.users):
            user = User.objects.create_user(f"user{number}@drill.example")
            Membership.objects.create(clinic=clinic, user=user, role=Role.CLINICIAN)
            sharing.share_create(clinic=clinic, studies=[studies[number % len(studies)]], created_by=user)
            audit_record(clinic=clinic, action="member.invited", actor=user)
    devnull = open(os.devnull, "w")  # noqa: SIM115
    started = time.perf_counter()
    call_command("backup_database", stdout=devnull)
    backup_seconds = time.perf_counter() - started
    db_bytes = database.sqlite_path().stat().st_size
    started = time.perf_counter()
    call_command("restore_database", stdout=devnull)
    restore_db_seconds = time.perf_counter() - started
    # 2 TB of instances of the assumed size; the database grows with the index (bytes per instance measured).
    instances_2tb = 2e12 / (args.instance_mb * 1e6)
    db_2tb = db_bytes / max(total, 1) * instances_2tb
    snapshot_rate = db_bytes / backup_seconds
    restore_rate = db_bytes / restore_db_seconds
    report(f"Control plane (SQLite, {args.users} users, {args.users} share links, {total} instances indexed)", [
        ("database size", f"{db_bytes / 1e6:.1f} MB ({db_bytes / max(total, 1):.0f} bytes per instance)"),
        ("backup_database (snapshot, encrypt, write)", f"{backup_seconds:.2f} s ({snapshot_rate / 1e6:.0f} MB/s)"),
        ("RPO control plane", f"<= {60 + backup_seconds:.0f} s (beat every 60 s + one snapshot)"),
        ("restore_database (RTO control plane)", f"{restore_db_seconds:.2f} s"),
    ])
    report(f"Control plane extrapolated to 2 TB ({instances_2tb / 1e6:.1f} M instances of {args.instance_mb:g} MB)", [
        ("database size", f"{db_2tb / 1e9:.1f} GB"),
        ("backup_database", f"{db_2tb / snapshot_rate / 60:.1f} min (PostgreSQL + pgBackRest advised at this size)"),
        ("RPO control plane", f"<= {(60 + db_2tb / snapshot_rate) / 60:.0f} min (beat every minute + one snapshot)"),
        ("restore_database", f"{db_2tb / restore_rate / 60:.1f} min"),
    ])


def images_2tb(args: argparse.Namespace, *, total: int, size: int, restore_seconds: float,
               rebuild_seconds: float) -> None:
    instances_2tb = 2e12 / (args.instance_mb * 1e6)
    restore_rate_bytes = size / restore_seconds
    rebuild_rate = total / rebuild_seconds
    report(f"Images extrapolated to 2 TB ({instances_2tb / 1e6:.1f} M instances of {args.instance_mb:g} MB)", [
        ("restore --all (bytes-bound, measured rate)",
         f"{2e12 / restore_rate_bytes / 3600:.1f} h at {restore_rate_bytes / 1e6:.0f} MB/s "
         f"(per-object cost dominates with {size / max(total, 1) / 1e3:.0f} kB objects: an upper bound)"),
        ("restore --all (object-bound, measured rate)",
         f"{instances_2tb / (total / restore_seconds) / 3600:.1f} h at {total / restore_seconds:.0f} objects/s"),
        ("rebuild_index of all of it (no database backup)",
         f"{instances_2tb / rebuild_rate / 3600:.1f} h at {rebuild_rate:.0f} instances/s"),
        ("rebuild_index of the last minute's uploads (after restore_database)",
         f"{rebuild_rate * 60:.0f} instances/min capacity"),
    ])


def rpo(args: argparse.Namespace, temp: Path, env: dict[str, str], replication) -> None:  # type: ignore[no-untyped-def]
    from studies.ingest import instance_ingest
    from studies.models import Instance

    clinic = make_clinic("drill-rpo")
    count = int(args.rate * args.seconds)
    paths = make_files(temp / "rpo", count)
    log = (temp / "worker.log").open("wb")
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("celery")), "-A", "portal", "worker", "--concurrency=2",
         "--loglevel=WARNING", "--without-mingle", "--without-gossip", "-n", f"drill-{os.getpid()}@%h"],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        time.sleep(5)  # let the worker connect
        interval = 1.0 / args.rate
        started = time.perf_counter()
        for number, path in enumerate(paths):
            delay = started + number * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            instance_ingest(clinic=clinic, source_path=str(path))
        load_seconds = time.perf_counter() - started
        deadline = time.monotonic() + 120
        pending = Instance.objects.for_clinic(clinic).filter(replicated_at=None)
        while pending.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        lags = [
            (replicated - stored).total_seconds()
            for stored, replicated in Instance.objects.for_clinic(clinic)
            .filter(replicated_at__isnull=False).values_list("stored_at", "replicated_at")
        ]
        report(f"RPO: {count} uploads at {args.rate:g}/s over {load_seconds:.0f} s, one worker (2 processes)", [
            ("replicated", f"{len(lags)} of {count}"),
            ("lag p50", f"{percentile(lags, 0.5):.3f} s"),
            ("lag p95", f"{percentile(lags, 0.95):.3f} s"),
            ("lag max", f"{max(lags):.3f} s" if lags else "n/a"),
        ])
    finally:
        os.killpg(worker.pid, 15)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:  # a loaded machine: do not leave it behind
            os.killpg(worker.pid, 9)
            worker.wait(30)


def modes(args: argparse.Namespace, temp: Path) -> None:
    from django.conf import settings
    from django.db import transaction

    from portal.celery import app
    from studies.ingest import instance_ingest
    from studies.models import Instance

    rows = []
    for mode in ("async", "sync"):
        settings.REPLICATION_MODE = mode
        clinic = make_clinic(f"drill-{mode}")
        paths = make_files(temp / mode, args.mode_samples)
        latencies = []
        # async: the replication message is published (broker round trip) and the upload is acknowledged.
        app.conf.task_always_eager = False
        for path in paths:
            started = time.perf_counter()
            with transaction.atomic():
                instance_ingest(clinic=clinic, source_path=str(path))
            latencies.append(time.perf_counter() - started)
        both = Instance.objects.for_clinic(clinic).filter(replicated_at__isnull=False).count()
        rows.append((
            mode,
            f"p50 {percentile(latencies, 0.5) * 1000:.1f} ms, p95 {percentile(latencies, 0.95) * 1000:.1f} ms, "
            f"{len(latencies) / sum(latencies):.0f} uploads/s (one client); "
            f"{both} of {len(paths)} on both stores when acknowledged",
        ))
    report(f"Ingest latency per upload, {args.mode_samples} uploads of 39 kB (REPLICATION_MODE)", rows)


if __name__ == "__main__":
    main()

"""Disaster-recovery drill: recovery time (RTO) and replication lag (RPO), sync vs async ingest.

Runs standalone and touches no other data:

    .venv/bin/python bench/dr_drill.py [--instances 10000] [--database-url postgres://.../portal_drill]
        [--broker-url redis://127.0.0.1:6379/8] [--rate 20] [--seconds 30] [--pg-cluster]

With ``--database-url`` the database named there is DROPPED and re-created (give it a name of its
own); without it, SQLite in a temporary folder. ``--pg-cluster`` starts a private PostgreSQL 15 cluster
instead (initdb and pg_ctl as the postgres user, as tests/studies/test_backup_postgresql.py does; needs
root, pgbackrest and /usr/lib/postgresql/15/bin) with its WAL archived by pgBackRest into the replica, so the
database restore is timed too. Stores are local folders in a temporary folder.

Every phase reports wall time, CPU seconds (this process, its threads and its waited-for children:
``getrusage``; with ``--pg-cluster`` also the cluster's server processes, from /proc) and the load average
at its start: the wall clock depends on what else the machine runs, the CPU time much less.

1. Setup: ingest N real DICOM instances (pydicom's CT_small.dcm with fresh UIDs, 100 per study) through
   ``instance_ingest``, replicated to the replica.
2. RTO restore: primary storage is wiped; ``restore --all`` rewrites it from the replica.
3. RTO rebuild: the index (patients, studies, series, instances, clinic keys) is deleted;
   ``rebuild_index`` recreates it from the replica alone.
4. Verification throughput: ``verify_backups --all``.
5. RPO: a real Celery worker runs while uploads arrive at a steady rate; lag = replicated_at - stored_at.
6. Ingest latency with REPLICATION_MODE=async vs sync.
7. Control plane: users, share links and audit entries are added next to the index. SQLite:
   ``backup_database`` (encrypted snapshot; bounds the RPO with the beat interval) and ``restore_database``
   (the control plane's RTO) are timed. ``--pg-cluster``: a full pgBackRest base backup is taken before the
   control-plane changes, which then reach the repository only as archived WAL; the data directory is
   wiped and ``restore_database --run`` (pgBackRest restore) plus the start with WAL replay are timed, and
   the users are counted afterwards. Both RTOs are extrapolated to 2 TB.
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from common import ct_series_write, process_tree_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))]


PG_BIN = Path("/usr/lib/postgresql/15/bin")


class Phase:
    """Wall time, CPU seconds and load average of one phase of the drill (``with Phase(cluster) as p:``)."""

    def __init__(self, cluster: dict | None = None) -> None:
        self.cluster = cluster

    def __enter__(self) -> Phase:
        self.load = os.getloadavg()[0]
        self._cpu = cpu_seconds()
        self._server = server_cpu_seconds(self.cluster)
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._started
        self.cpu = cpu_seconds() - self._cpu
        self.server = server_cpu_seconds(self.cluster) - self._server

    def text(self, count: int | None = None, unit: str = "instances") -> str:
        rate = f" ({count / self.seconds:.0f} {unit}/s)" if count else ""
        server = f" + {self.server:.2f} s PostgreSQL" if self.cluster else ""
        per = f"; {(self.cpu + self.server) * 1000 / count:.2f} ms CPU per {unit[:-1]}" if count else ""
        return f"{self.seconds:.2f} s wall{rate}; CPU {self.cpu:.2f} s{server}{per}; load {self.load:.1f} at start"


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def server_cpu_seconds(cluster: dict | None) -> float:
    """CPU seconds of the private cluster: its postmaster with its exited children, and its live children."""
    if not cluster:
        return 0.0
    try:
        postmaster = int((cluster["data"] / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return cluster.get("cpu_before_restart", 0.0)
    return cluster.get("cpu_before_restart", 0.0) + process_tree_cpu_seconds(postmaster, with_reaped_children=True)


def as_postgres(*args: str) -> None:
    result = subprocess.run(["runuser", "-u", "postgres", "--", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"{args}: {result.stdout}\n{result.stderr}")


def cluster_start(temp: Path) -> tuple[dict, dict[str, str]]:
    """A private PostgreSQL 15 cluster in ``temp``, as tests/studies/test_backup_postgresql.py starts one."""
    import socket

    import psycopg

    if not (PG_BIN / "initdb").exists() or shutil.which("pgbackrest") is None or os.geteuid() != 0:
        raise SystemExit("--pg-cluster needs PostgreSQL 15 binaries, pgbackrest and root (to run them as postgres)")
    temp.chmod(0o755)
    folder = temp / "pg"
    folder.mkdir()
    shutil.chown(folder, "postgres", "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = folder / "data"
    as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    start = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-t", "1800", "-l", str(folder / "pg.log"),
             "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"]
    as_postgres(*start)
    for owned in (temp / "replica" / "database" / "pgbackrest", folder / "pgbackrest"):
        owned.mkdir(parents=True)
        for level in (owned, *owned.parents):
            if level == temp:
                break
            shutil.chown(level, "postgres", "postgres")
    with psycopg.connect(f"postgres://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE portal")
    env = {
        "DATABASE_BACKUP_PG_PATH": str(data),
        "DATABASE_BACKUP_PG_SOCKET": str(folder),
        "DATABASE_BACKUP_LOCK_PATH": str(folder / "pgbackrest"),
        "DATABASE_BACKUP_CIPHER_PASS": "drill-cipher-passphrase",
        "DATABASE_BACKUP_COMMAND": "runuser -u postgres -- pgbackrest",
    }
    os.environ.update(env)
    cluster = {"data": data, "port": port, "start": start, "folder": folder,
               "url": f"postgres://postgres@127.0.0.1:{port}/portal"}
    return cluster, env


def cluster_stop(cluster: dict, mode: str = "fast") -> None:
    from django.db import connections

    connections.close_all()
    cluster["cpu_before_restart"] = server_cpu_seconds(cluster)
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(cluster["data"]), "-m", mode, "stop")


def cluster_archiving_on(cluster: dict) -> None:
    """``backup_database --setup`` as the README says, its lines into postgresql.conf, and a restart."""
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("backup_database", "--setup", stdout=out)
    archive_command = next(line for line in out.getvalue().splitlines() if line.startswith("archive_command"))
    with (cluster["data"] / "postgresql.conf").open("a") as conf:
        conf.write(f"archive_mode = on\nwal_level = replica\narchive_timeout = 60\n{archive_command}\n")
    cluster_stop(cluster)
    as_postgres(*cluster["start"])


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
    return [path for path, _ in ct_series_write(folder, count, patient_prefix="DRILL")]


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
    parser.add_argument("--pg-cluster", action="store_true",
                        help="a private PostgreSQL 15 cluster with pgBackRest WAL archiving: times the database restore")
    args = parser.parse_args()
    if args.database_url and args.pg_cluster:
        parser.error("--database-url and --pg-cluster exclude each other")
    if args.database_url:
        recreate_database(args.database_url)

    temp = Path(tempfile.mkdtemp(prefix="dr-drill-", dir="/tmp"))
    cluster = None
    try:
        database_url = args.database_url
        if args.pg_cluster:
            cluster, _ = cluster_start(temp)
            database_url = cluster["url"]
        env = setup_django(temp, database_url, args.broker_url)
        if cluster:
            env.update({key: os.environ[key] for key in os.environ if key.startswith("DATABASE_BACKUP_")})
            cluster_archiving_on(cluster)
        run(args, temp, env, cluster)
    finally:
        if cluster:
            subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(cluster["data"]),
                            "-m", "immediate", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def run(args: argparse.Namespace, temp: Path, env: dict[str, str], cluster: dict | None = None) -> None:
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.db.models import Sum

    from portal.celery import app
    from studies.archive import keys
    from studies.backup import replication
    from studies.models import ClinicKey, Instance, Patient, Series, Study

    engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
    print(f"DR drill: {args.instances} instances, database {engine}"
          f"{' (private cluster, pgBackRest)' if cluster else ''}, {os.cpu_count()} CPUs")
    args.empty_database_bytes = database_bytes()  # migrated, empty: what does not grow with the index
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
    base_backup = None
    if cluster:
        # The daily base backup, taken here: everything after it reaches the repository only as archived WAL.
        with Phase(cluster) as base_backup:
            call_command("backup_database", "--type", "full", stdout=devnull)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
            cluster["wal_at_backup"] = cursor.fetchone()[0]

    # RTO 1: primary lost, restored from the replica.
    shutil.rmtree(temp / "primary")
    with Phase(cluster) as restore_phase:
        call_command("restore", "--all", "--jobs", str(args.jobs), stdout=devnull)

    # RTO 2: the index lost, rebuilt from the replica.
    Instance.objects.all().delete()
    Series.objects.all().delete()
    Study.objects.all().delete()
    Patient.objects.all().delete()
    ClinicKey.objects.all().delete()
    keys.key_cache_clear()
    with Phase(cluster) as rebuild_phase:
        call_command("rebuild_index", "--jobs", str(args.jobs), stdout=devnull)
    rebuilt = dict(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", "sha256"))
    assert rebuilt == snapshot, "the rebuilt index differs from the original"

    with Phase(cluster) as verify_phase:
        call_command("verify_backups", "--all", stdout=devnull)
    report(f"RTO for {total} instances", [
        ("restore --all (primary wiped)", restore_phase.text(total)),
        (f"rebuild_index --jobs {args.jobs} (index lost; from sidecars)", rebuild_phase.text(total)),
        ("both, end to end", f"{restore_phase.seconds + rebuild_phase.seconds:.1f} s wall, "
         f"{restore_phase.cpu + restore_phase.server + rebuild_phase.cpu + rebuild_phase.server:.1f} s CPU"),
        ("verify_backups --all", verify_phase.text(total)),
    ])

    images_2tb(args, total=total, size=size, restore=restore_phase, rebuild=rebuild_phase, verify=verify_phase)
    if cluster:
        control_plane_postgresql(args, cluster, total=total, snapshot=snapshot, base_backup=base_backup)
    elif engine == "sqlite3":
        control_plane(args, total=total)
    else:
        control_plane_untimed(args, total=total)
    # RPO: steady uploads with a running worker.
    rpo(args, temp, env, replication)
    # Sync vs async ingest.
    modes(args, temp)


def database_bytes() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":  # the file alone misses what is still in its WAL
            cursor.execute("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
        else:
            cursor.execute("SELECT pg_database_size(current_database())")
        return cursor.fetchone()[0]


def database_2tb(args: argparse.Namespace, db_bytes: int, total: int) -> tuple[float, float]:
    """(bytes per instance, database bytes at 2 TB): what an empty database holds does not grow with it."""
    per_instance = (db_bytes - args.empty_database_bytes) / max(total, 1)
    return per_instance, args.empty_database_bytes + per_instance * 2e12 / (args.instance_mb * 1e6)


def control_plane_changes(args: argparse.Namespace) -> None:
    from django.db import transaction

    from studies.models import Study
    from studies.sharing import services as sharing
    from tenants.audit import audit_record
    from tenants.models import Clinic, Membership, User
    from tenants.roles import Role

    clinic = Clinic.objects.get(slug="drill")
    studies = list(Study.objects.for_clinic(clinic)[:50])
    with transaction.atomic():
        for number in range(args.users):
            user = User.objects.create_user(f"user{number}@drill.example")
            Membership.objects.create(clinic=clinic, user=user, role=Role.CLINICIAN)
            sharing.share_create(clinic=clinic, studies=[studies[number % len(studies)]], created_by=user)
            audit_record(clinic=clinic, action="member.invited", actor=user)


def control_plane(args: argparse.Namespace, *, total: int) -> None:
    from django.core.management import call_command


    control_plane_changes(args)
    devnull = open(os.devnull, "w")  # noqa: SIM115
    with Phase() as backup:
        call_command("backup_database", stdout=devnull)
    db_bytes = database_bytes()
    with Phase() as restore:
        call_command("restore_database", stdout=devnull)
    # 2 TB of instances of the assumed size; the database grows with the index (bytes per instance measured).
    instances_2tb = 2e12 / (args.instance_mb * 1e6)
    per_instance, db_2tb = database_2tb(args, db_bytes, total)
    snapshot_rate = db_bytes / backup.seconds
    restore_rate = db_bytes / restore.seconds
    report(f"Control plane (SQLite, {args.users} users, {args.users} share links, {total} instances indexed)", [
        ("database size", f"{db_bytes / 1e6:.1f} MB ({args.empty_database_bytes / 1e6:.1f} MB empty + "
         f"{per_instance:.0f} bytes per instance)"),
        ("backup_database (snapshot, encrypt, write)", f"{backup.text()} ({snapshot_rate / 1e6:.0f} MB/s)"),
        ("RPO control plane", f"<= {60 + backup.seconds:.0f} s (beat every 60 s + one snapshot)"),
        ("restore_database (RTO control plane)", f"{restore.text()} ({restore_rate / 1e6:.0f} MB/s)"),
    ])
    report(f"Control plane extrapolated to 2 TB ({instances_2tb / 1e6:.1f} M instances of {args.instance_mb:g} MB)", [
        ("database size", f"{db_2tb / 1e9:.1f} GB"),
        ("backup_database", f"{db_2tb / snapshot_rate / 60:.1f} min (PostgreSQL + pgBackRest advised at this size)"),
        ("RPO control plane", f"<= {(60 + db_2tb / snapshot_rate) / 60:.0f} min (beat every minute + one snapshot)"),
        ("restore_database", f"{db_2tb / restore_rate / 60:.1f} min"),
    ])


def control_plane_untimed(args: argparse.Namespace, *, total: int) -> None:
    """--database-url: a server the drill does not own, so its restore is not run (use --pg-cluster for that)."""
    db_bytes = database_bytes()
    per_instance, db_2tb = database_2tb(args, db_bytes, total)
    report("Control plane (PostgreSQL server given by --database-url: pgBackRest not run; --pg-cluster times it)", [
        ("database size", f"{db_bytes / 1e6:.1f} MB ({per_instance:.0f} bytes per instance); 2 TB: ~{db_2tb / 1e9:.0f} GB"),
        ("RPO control plane", "one WAL segment (archive_timeout; pgBackRest archive-push per segment)"),
    ])


def control_plane_postgresql(args: argparse.Namespace, cluster: dict, *, total: int, snapshot: dict,
                             base_backup: Phase) -> None:
    """Lose the data directory, restore it with pgBackRest and replay the WAL archived since the base backup."""
    import psycopg
    from django.core.management import call_command
    from django.db import connection

    from studies.models import Instance
    from tenants.models import Clinic, User

    control_plane_changes(args)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database()), pg_current_wal_lsn() - '0/0'::pg_lsn")
        db_bytes, wal_end = cursor.fetchone()
        # What archive_timeout does: the segment written since is what a crash can lose (the RPO).
        cursor.execute("SELECT pg_walfile_name(pg_switch_wal())")
        switched = cursor.fetchone()[0]
    users = User.objects.count()
    repository_root = cluster["folder"].parent / "replica" / "database" / "pgbackrest"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT last_archived_wal FROM pg_stat_archiver")
            archived = cursor.fetchone()[0]
        if archived and archived >= switched:
            break
        time.sleep(0.5)
    repository = sum(path.stat().st_size for path in repository_root.rglob("*") if path.is_file())
    # The disaster: the data directory is gone.
    cluster_stop(cluster, "immediate")
    for child in cluster["data"].iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    devnull = open(os.devnull, "w")  # noqa: SIM115
    with Phase(cluster) as restore:
        call_command("restore_database", "--run", stdout=devnull)
    with Phase(cluster) as replay:
        as_postgres(*cluster["start"])
        with psycopg.connect(f"postgres://postgres@127.0.0.1:{cluster['port']}/portal", autocommit=True) as conn:
            while conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                time.sleep(0.2)
    assert User.objects.count() == users, "users are missing after the restore"
    clinic = Clinic.objects.get(slug="drill")
    restored = dict(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", "sha256"))
    assert restored == snapshot, "the restored index differs from the original"
    instances_2tb = 2e12 / (args.instance_mb * 1e6)
    per_instance, db_2tb = database_2tb(args, db_bytes, total)
    wal = float(wal_end - cluster["wal_at_backup"])
    report(f"Control plane (PostgreSQL 15, private cluster, pgBackRest posix repository; {args.users} users, "
           f"{args.users} share links, {total} instances indexed)", [
        ("database size", f"{db_bytes / 1e6:.1f} MB ({args.empty_database_bytes / 1e6:.1f} MB empty + "
         f"{per_instance:.0f} bytes per instance)"),
        ("pgBackRest full base backup (before the restore, rebuild and users)", base_backup.text()),
        ("repository size (bundled, zstd, encrypted)", f"{repository / 1e6:.1f} MB"),
        ("RPO control plane", "the WAL segment being written (archive_timeout = 60 s here)"),
        ("restore_database --run (pgBackRest restore --delta)", restore.text()),
        (f"start + WAL replay until out of recovery ({wal / 1e6:.0f} MB of WAL since the base backup)",
         replay.text()),
        ("RTO control plane (restore + replay)", f"{restore.seconds + replay.seconds:.1f} s wall; "
         f"{restore.cpu + restore.server + replay.cpu + replay.server:.1f} s CPU"),
        ("checked after the restore", f"{users} users, {len(restored)} instances as before"),
    ])
    restore_rate = db_bytes / restore.seconds
    report(f"Control plane extrapolated to 2 TB ({instances_2tb / 1e6:.1f} M instances of {args.instance_mb:g} MB)", [
        ("database size", f"{db_2tb / 1e9:.1f} GB"),
        ("pgBackRest restore at the measured rate", f"{db_2tb / restore_rate / 60:.1f} min "
         f"({restore_rate / 1e6:.0f} MB/s of database); plus the replay of the WAL since the last base backup"),
    ])


def images_2tb(args: argparse.Namespace, *, total: int, size: int, restore: Phase, rebuild: Phase,
               verify: Phase) -> None:
    instances_2tb = 2e12 / (args.instance_mb * 1e6)
    restore_rate_bytes = size / restore.seconds
    rebuild_rate = total / rebuild.seconds

    def cpu_hours(phase: Phase) -> str:
        return f"{(phase.cpu + phase.server) / total * instances_2tb / 3600:.1f} CPU-h"

    report(f"Images extrapolated to 2 TB ({instances_2tb / 1e6:.1f} M instances of {args.instance_mb:g} MB)", [
        ("restore --all (bytes-bound, measured rate)",
         f"{2e12 / restore_rate_bytes / 3600:.1f} h at {restore_rate_bytes / 1e6:.0f} MB/s "
         f"(per-object cost dominates with {size / max(total, 1) / 1e3:.0f} kB objects: an upper bound)"),
        ("restore --all (object-bound, measured rate)",
         f"{instances_2tb / (total / restore.seconds) / 3600:.1f} h at {total / restore.seconds:.0f} objects/s; "
         f"{cpu_hours(restore)}"),
        ("rebuild_index of all of it (no database backup)",
         f"{instances_2tb / rebuild_rate / 3600:.1f} h at {rebuild_rate:.0f} instances/s; {cpu_hours(rebuild)}"),
        ("rebuild_index of the last minute's uploads (after restore_database)",
         f"{rebuild_rate * 60:.0f} instances/min capacity"),
        ("verify_backups --all (object-bound)",
         f"{instances_2tb / (total / verify.seconds) / 3600:.1f} h; {cpu_hours(verify)}"),
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

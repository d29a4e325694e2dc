"""Profile: CPU time and database statements per instance of the two ingest ways in, in one process.

Run: `.venv/bin/python bench/profile_ingest.py [--count 60] [--database-url URL]`. Starts the C-STORE
listener in-process (SQLite default in a scratch folder, encrypted local stores, asynchronous
replication, as `bench_orthanc.py` runs the portal) and sends the files over one association with
pynetdicom (or split over ``--associations N`` at once, which the listener's group commit ingests
together); then posts the same number of other files by STOW-RS, 10 per request, through Django's test
client. Prints, per instance: the CPU time of the handler's own thread (C-STORE) or of the process
(STOW-RS), the wall time, the number of SQL statements and the slowest statements (all of them with
PROFILE_ALL_STATEMENTS=1; with PROFILE_CPROFILE=N, the N costliest calls of the C-STORE handler, or of
the STOW-RS requests, under cProfile). CPU time barely
depends on the machine's load, so use it to compare changes on a busy machine; wall times do.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class Statements:
    """A Django execute wrapper counting statements and their time, by the statement's start."""

    def __init__(self) -> None:
        self.count: collections.Counter[str] = collections.Counter()
        self.seconds: collections.Counter[str] = collections.Counter()

    def __call__(self, execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.count[sql[:100]] += 1
            self.seconds[sql[:100]] += time.perf_counter() - started

    def report(self, instances: int) -> None:
        print(f"  SQL statements per instance: {sum(self.count.values()) / instances:.1f}")
        shown = None if os.environ.get("PROFILE_ALL_STATEMENTS") else 6
        for sql, seconds in self.seconds.most_common(shown):
            print(f"    {seconds / instances * 1000:6.2f} ms/inst  x{self.count[sql] / instances:.1f}  {sql}")


def setup(database_url: str | None) -> tuple[Path, str, str, str]:
    var = Path(tempfile.mkdtemp(prefix="profile-ingest-"))
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "PORTAL_VAR_DIR": str(var),
        "PRIMARY_STORE_URL": (var / "primary").as_uri(),
        "REPLICA_STORE_URL": (var / "replica").as_uri(),
        "CELERY_BROKER_URL": "memory://",
        "LOG_LEVEL": "ERROR",
        "REPLICATION_MODE": "async",
        "DATABASE_URL": database_url or f"sqlite:///{var / 'portal.sqlite3'}",
        # The profiled node calls from 127.0.0.1: an internal address a node may have only if allowed.
        "DICOM_NODE_ALLOWED_NETWORKS": "127.0.0.0/8",
    })
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.ALLOWED_HOSTS = ["*"]
    call_command("migrate", verbosity=0, interactive=False)
    from studies.dimse import nodes
    from tenants import services
    from tenants.models import Clinic, User

    slug = f"profile-{uuid.uuid4().hex[:6]}"
    owner = User.objects.create_user(f"{slug}@example.org", uuid.uuid4().hex)
    clinic = services.clinic_create(name="Profile", slug=slug, owner=owner)
    ae_title = slug.upper()[:16]
    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=10**15, ae_title=ae_title)
    nodes.dicom_node_create(clinic=clinic, ae_title="BENCHSCU", host="127.0.0.1", port=104)
    token = services.api_token_create(clinic=clinic, name="profile", role="owner").secret
    return var, slug, ae_title, token


def profile_c_store(var: Path, ae_title: str, count: int, associations: int = 1) -> None:
    from django.db import connection

    from bench.bench_orthanc import c_store, free_port, write_files
    from studies.dimse import handlers, scp

    files = write_files(var / "store", count, "1.2.826.0.1.3680043.8.498." + str(uuid.uuid4().int)[:20])
    statements = Statements()
    cpu: list[float] = []
    wall: list[float] = []
    real = handlers.handle_store
    profiler = cProfile.Profile() if os.environ.get("PROFILE_CPROFILE") else None

    def measured(event):  # type: ignore[no-untyped-def]
        with connection.execute_wrapper(statements):
            if profiler is not None:
                profiler.enable()
            started, thread_started = time.perf_counter(), time.thread_time()
            try:
                return real(event)
            finally:
                cpu.append(time.thread_time() - thread_started)
                wall.append(time.perf_counter() - started)
                if profiler is not None:
                    profiler.disable()

    sizes: list[int] = []
    real_batch = getattr(handlers, "_ingest_batch", None)
    if real_batch is not None:  # the group commit's batch function (looked up when a group is made)
        def batch_measured(paths, **kwargs):  # type: ignore[no-untyped-def]
            sizes.append(len(paths))
            return real_batch(paths, **kwargs)

        handlers._ingest_batch = batch_measured
    index = [event for event, _ in handlers.HANDLERS].index(handlers.evt.EVT_C_STORE)
    handlers.HANDLERS[index] = (handlers.evt.EVT_C_STORE, measured)
    port = free_port()
    server = scp.scp_start(host="127.0.0.1", port=port, ae_title="PROFILE", block=False)
    assert server is not None
    try:
        time.sleep(0.5)
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=associations) as pool:
            list(pool.map(lambda part: c_store("127.0.0.1", port, ae_title, part),
                          [files[i::associations] for i in range(associations)]))
        rate = count / (time.perf_counter() - started)
    finally:
        server.shutdown()
    print(f"C-STORE, {associations} association(s), {count} instances: {rate:.1f} instances/s "
          "(wall, load-dependent)")
    # With several associations one handler ingests the batch of all (group commit): sum over handlers.
    print(f"  handler threads' CPU per instance: {sum(cpu) / len(cpu) * 1000:.1f} ms; "
          f"handler wall per instance: {sum(wall) / len(wall) * 1000:.1f} ms")
    if sizes:
        print(f"  batches: {len(sizes)}, mean {sum(sizes) / len(sizes):.1f} instances, largest {max(sizes)}")
    statements.report(count)
    if profiler is not None:
        pstats.Stats(profiler).sort_stats(os.environ.get("PROFILE_SORT", "cumulative")).print_stats(int(os.environ["PROFILE_CPROFILE"]))


def profile_stow(var: Path, slug: str, token: str, count: int) -> None:
    from django.db import connection
    from django.test import Client

    from bench.bench_dicomweb import BOUNDARY
    from bench.bench_orthanc import write_files

    files = write_files(var / "stow", count + 10, "1.2.826.0.1.3680043.8.498." + str(uuid.uuid4().int)[:20])
    bodies = [
        b"".join(
            f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
            for p in files[i : i + 10]
        ) + f"--{BOUNDARY}--\r\n".encode()
        for i in range(0, len(files), 10)
    ]
    client = Client()
    headers = {
        "content_type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "HTTP_ACCEPT": "application/dicom+json",
    }

    def post(body: bytes) -> None:
        response = client.post(f"/dicomweb/{slug}/studies", data=body, **headers)
        if response.status_code != 200:
            raise RuntimeError(f"STOW-RS answered {response.status_code}: {response.content[:300]!r}")

    post(bodies[0])  # warm-up: the clinic key, the study rows
    statements = Statements()
    # Timed by process CPU: the write threads' CPU shows up where the request thread waits for them.
    profiler = cProfile.Profile(time.process_time) if os.environ.get("PROFILE_CPROFILE") else None
    started, cpu_started = time.perf_counter(), time.process_time()
    with connection.execute_wrapper(statements):
        if profiler is not None:
            profiler.enable()
        for body in bodies[1:]:
            post(body)
        if profiler is not None:
            profiler.disable()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    stored = len(bodies[1:]) * 10
    print(f"STOW-RS, one client, 10 instances per request, {stored} instances: {stored / wall:.1f} instances/s "
          f"(wall, load-dependent)")
    print(f"  process CPU per instance: {cpu / stored * 1000:.1f} ms")
    statements.report(stored)
    if profiler is not None:
        pstats.Stats(profiler).sort_stats(os.environ.get("PROFILE_SORT", "cumulative")).print_stats(int(os.environ["PROFILE_CPROFILE"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=60, help="instances per way in (default 60)")
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL (default: SQLite in a scratch folder)")
    parser.add_argument("--associations", type=int, default=1, help="simultaneous C-STORE associations")
    parser.add_argument("--only", default="c_store,stow", help="ways in to profile (default: c_store,stow)")
    args = parser.parse_args()
    var, slug, ae_title, token = setup(args.database_url)
    import shutil

    try:
        if "c_store" in args.only:
            profile_c_store(var, ae_title, args.count, args.associations)
        if "stow" in args.only:
            profile_stow(var, slug, token, args.count)
    finally:
        shutil.rmtree(var, ignore_errors=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""Profile WADO-RS whole-study retrieval in process, by CPU time (not wall clock).

Sets up the portal on a scratch SQLite database (encryption on, as `bench_orthanc.py` does), stores
``--instances`` 0.53 MB CT instances, then calls the WSGI application (middleware included) for the whole
study ``--rounds`` times, reading the streamed body as gunicorn would, and prints the CPU seconds per
100 MB of the process (both threads: the request thread and the read-ahead) and, with ``--profile``, the
functions where that time goes. CPU time is what a loaded machine does not distort much.

Run: `.venv/bin/python bench/profile_wado.py [--instances 200] [--rounds 5] [--profile]`.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup(var: Path) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        PORTAL_VAR_DIR=str(var),
        PRIMARY_STORE_URL=(var / "primary").as_uri(),
        REPLICA_STORE_URL=(var / "replica").as_uri(),
        CELERY_BROKER_URL="memory://",
        LOG_LEVEL="WARNING",
        REPLICATION_MODE="async",
        DATABASE_URL=f"sqlite:///{var / 'portal.sqlite3'}",
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def study_store(var: Path, count: int) -> tuple[str, str, str]:
    """Store ``count`` CT instances of one study; return the clinic slug, a token and the study UID."""
    from studies.ingest import instance_ingest
    from tenants import services
    from tenants.models import Clinic, User
    from tests.dicom_files import write_ct

    slug = f"prof-{uuid.uuid4().hex[:6]}"
    owner = User.objects.create_user(f"{slug}@example.org", uuid.uuid4().hex)
    clinic = services.clinic_create(name="Profile", slug=slug, owner=owner)
    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=10**15)
    clinic.refresh_from_db()
    study_uid = "1.2.826.0.1.3680043.8.498." + str(uuid.uuid4().int)[:20]
    for i in range(count):
        path = write_ct(
            var / "files" / f"{i:05d}.dcm", study_uid=study_uid, series_uid=study_uid + ".1", rows=512,
            columns=512, instance_number=i + 1, pixel_seed=i,
        )
        instance_ingest(clinic=clinic, source_path=str(path), source="test")
        path.unlink()
    token = services.api_token_create(clinic=clinic, name="profile", role="owner").secret
    return slug, token, study_uid


def retrieve(application, slug: str, token: str, study_uid: str) -> int:  # type: ignore[no-untyped-def]
    """One whole-study WADO-RS request through the WSGI application; return the body size."""
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": f"/dicomweb/{slug}/studies/{study_uid}",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "HTTP_HOST": "127.0.0.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_ACCEPT": 'multipart/related; type="application/dicom"; transfer-syntax=*',
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    status: list[str] = []
    body = application(environ, lambda s, headers, exc_info=None: status.append(s))
    size = 0
    try:
        for chunk in body:
            size += len(chunk)
    finally:
        getattr(body, "close", lambda: None)()
    if not status or not status[0].startswith("200"):
        raise RuntimeError(f"WADO-RS answered {status}")
    return size


def _threads_profile(profiles: list[cProfile.Profile]) -> None:
    """Profile every thread started from now on too (the read-ahead), into ``profiles``."""
    import threading

    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.runcall(original, self)

    threading.Thread.run = run  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print the 30 costliest functions (cProfile)")
    args = parser.parse_args()
    var = Path(tempfile.mkdtemp(prefix="profile-wado-"))
    try:
        setup(var)
        slug, token, study_uid = study_store(var, args.instances)
        from portal.wsgi import application

        retrieve(application, slug, token, study_uid)  # warm caches (clinic key, code paths)
        profiler = cProfile.Profile() if args.profile else None
        thread_profiles: list[cProfile.Profile] = []
        if profiler:
            _threads_profile(thread_profiles)
        size, cpu_started, wall_started = 0, time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        for _ in range(args.rounds):
            size += retrieve(application, slug, token, study_uid)
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
        print(
            f"{args.rounds} x {size / args.rounds / 1e6:.1f} MB: {cpu / size * 1e8:.3f} CPU s per 100 MB "
            f"({size / cpu / 1e6:.0f} MB per CPU second), wall {size / wall / 1e6:.0f} MB/s, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        if profiler:
            pstats.Stats(profiler, *thread_profiles).sort_stats("tottime").print_stats(30)
    finally:
        shutil.rmtree(var, ignore_errors=True)


if __name__ == "__main__":
    main()

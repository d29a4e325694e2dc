"""Shared set-up for the benchmarks: a scratch PostgreSQL database and Django on it."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


@contextmanager
def _server(database_url: str) -> Iterator[tuple[Any, str]]:
    """The PostgreSQL server of ``database_url`` (through its ``postgres`` database) and the database's name."""
    import psycopg

    parsed = urlparse(database_url)
    with psycopg.connect(parsed._replace(path="/postgres").geturl(), autocommit=True) as connection:
        yield connection, parsed.path.lstrip("/")


def database_recreate(database_url: str) -> None:
    """Drop and create the benchmark's own database, so each run starts empty."""
    with _server(database_url) as (connection, name):
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')


def database_create_if_missing(database_url: str) -> None:
    """Create the benchmark's PostgreSQL database if it does not exist yet (kept, with what is in it)."""
    with _server(database_url) as (connection, name):
        if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            connection.execute(f'CREATE DATABASE "{name}"')


def production_environment(public_base_url: str) -> dict[str, str]:
    """Settings as the README's deployment section has an operator set them: DEBUG off, own secrets.

    With DEBUG on (the default run), Django logs every SQL statement of a request (its debug cursor), a
    cost production does not pay. The benchmarks talk plain HTTP on the loopback, as an app server does
    behind the TLS proxy, so the redirect to HTTPS is left off.
    """
    return {
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "MASTER_KEYS": "bench1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "PUBLIC_BASE_URL": public_base_url,
        "SECURE_SSL_REDIRECT": "0",
    }


def django_setup(database_url: str, var_dir: str, broker_url: str = "memory://") -> None:
    """Point Django at a fresh scratch database and a temporary var/ folder, and migrate."""
    import os
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.update({"DJANGO_SETTINGS_MODULE": "portal.settings", "DATABASE_URL": database_url,
                       "PORTAL_VAR_DIR": var_dir, "CELERY_BROKER_URL": broker_url, "LOG_LEVEL": "WARNING"})
    database_recreate(database_url)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def database_cpu_seconds() -> tuple[int, float] | None:
    """(pid, CPU seconds) of the PostgreSQL backend serving this process, when it runs on this machine."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return pid, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_seconds(pid: int, *, with_reaped_children: bool = False) -> float:
    """CPU seconds (user + system) used so far by a process and its live children (server workers).

    ``with_reaped_children`` adds what its exited children used, which the kernel credits to a parent
    once it has waited for them (PostgreSQL's postmaster and its short-lived backends).
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid:
            # utime stime, then cutime cstime: its waited-for children's
            total += sum(int(value) for value in fields[11 : 15 if with_reaped_children else 13]) / ticks
        elif int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def ct_series_write(folder: Path, count: int, *, patient_prefix: str, large: bool = False) -> list[tuple[Path, str]]:
    """Write ``count`` CT instances, 100 per study and series, and return their paths and SOP Instance UIDs.

    ``large``: 512 x 512 x 16-bit instances (0.53 MB) instead of pydicom's 39 kB CT_small.
    """
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    if large:
        from tests.dicom_files import ct_dataset

        template = ct_dataset(rows=512, columns=512)
    else:
        template = dcmread(get_testdata_file("CT_small.dcm"))
    files = []
    study = series = ""
    for number in range(count):
        if number % 100 == 0:
            study, series = generate_uid(), generate_uid()
        template.StudyInstanceUID = study
        template.SeriesInstanceUID = series
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        template.PatientID = f"{patient_prefix}-{number // 100}"
        template.InstanceNumber = number % 100 + 1
        path = folder / f"{number:06d}.dcm"
        template.save_as(path, enforce_file_format=True)
        files.append((path, str(template.SOPInstanceUID)))
    return files

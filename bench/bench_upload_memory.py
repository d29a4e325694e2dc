"""Benchmark: peak memory of the web process while a 2 GB multi-frame DICOM file is uploaded.

Runs standalone: `.venv/bin/python bench/bench_upload_memory.py [--size-mb 2048] [--database-url URL]`.
It starts a real `gunicorn portal.wsgi` worker, streams the generated file to the upload endpoint
(`/c/<clinic>/upload/files/`, API token auth) and reads the worker's peak RSS (VmHWM) from /proc.
Django spools the upload to a temporary file and `object_put` encrypts it in segments, so the peak
should stay far below both the file's size and the 256 MB budget. Needs about 3x the file's size free
on disk (the source file, Django's temporary copy, the encrypted object).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_ingest import setup_django  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=2048, help="file size in MiB (default 2048)")
    parser.add_argument("--database-url", help="a scratch database to migrate and use (default: temporary SQLite)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        var_dir = Path(tmp)
        setup_django(var_dir, args.database_url, None)
        from django.urls import reverse

        from tenants import services
        from tenants.models import User
        from tenants.roles import Role
        from tests.studies.upload_memory_support import (
            current_rss_bytes,
            gunicorn_server,
            peak_rss_bytes,
            stream_upload,
            write_large_multiframe,
        )

        owner = User.objects.create_user(f"bench-{uuid.uuid4().hex[:8]}@example.org", "x")
        clinic = services.clinic_create(name="Bench upload", slug=f"bench-{uuid.uuid4().hex[:8]}", owner=owner)
        token = services.api_token_create(clinic=clinic, name="bench", role=Role.UPLOADER).secret
        big = write_large_multiframe(var_dir / "big.dcm", args.size_mb * 1024 * 1024)
        size = big.stat().st_size
        env = {
            key: os.environ[key]
            for key in (
                "DATABASE_URL",
                "PORTAL_VAR_DIR",
                "MASTER_KEYS",
                "PRIMARY_STORE_URL",
                "REPLICA_STORE_URL",
                "CELERY_BROKER_URL",
            )
        }
        env["FILE_UPLOAD_TEMP_DIR"] = str(var_dir)
        url = reverse("studies:upload-file", kwargs={"clinic_slug": clinic.slug})
        with gunicorn_server(env) as (port, worker):
            idle = current_rss_bytes(worker)
            started = time.perf_counter()
            status, answer = stream_upload(port=port, url=url, path=big, token=token)
            elapsed = time.perf_counter() - started
            peak = peak_rss_bytes(worker)
        print(
            f"file {size / 2**20:.0f} MiB: HTTP {status} {answer.get('outcome')} in {elapsed:.1f} s "
            f"({size / elapsed / 1e6:.0f} MB/s)"
        )
        print(f"web worker RSS: {idle / 2**20:.0f} MiB idle, {peak / 2**20:.0f} MiB peak (budget 256 MiB)")
        if status != 201 or peak >= 256 * 2**20:
            raise SystemExit(1)


if __name__ == "__main__":
    main()

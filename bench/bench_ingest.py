"""Benchmark: ingest throughput (instances/s, MB/s) of 0.5 MB CT instances through ``instance_ingest``.

Runs standalone: `.venv/bin/python bench/bench_ingest.py [--count N] [--database-url URL] [--store-url URL]`.
Every instance goes the whole way a browser upload goes: parse and validate, dedupe check, quota
reservation, streamed AES-256-GCM encryption into the primary store (fsync'd), index rows in one
transaction. Two clinics are fed side by side, one instance each in turn (so changing load on the machine
hits both alike): encryption on (``object_put``) and, for comparison, encryption off (the same durable
store write of the plaintext with its SHA-256).

By default it uses a temporary var folder, SQLite and local stores, so it touches no other data; pass
`--database-url postgres://...` (an empty scratch database: it is migrated) to measure on PostgreSQL.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_django(var_dir: Path, database_url: str | None, store_url: str | None) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    os.environ["PORTAL_VAR_DIR"] = str(var_dir)
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{var_dir / 'bench.sqlite3'}"
    os.environ["CELERY_BROKER_URL"] = "memory://"
    os.environ["MASTER_KEYS"] = "bench:" + base64.b64encode(os.urandom(32)).decode()
    os.environ["PRIMARY_STORE_URL"] = store_url or (var_dir / "primary").as_uri()
    os.environ["REPLICA_STORE_URL"] = (var_dir / "replica").as_uri()
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def make_files(folder: Path, count: int) -> list[Path]:
    from tests.dicom_files import write_ct

    study = "1.2.826.0.1.3680043.8.498." + str(uuid.uuid4().int)[:20]
    series = study + ".1"
    # 512 x 512 x 16 bit: the 0.5 MB of one CT slice.
    return [
        write_ct(
            folder / f"{i}.dcm",
            study_uid=study,
            series_uid=series,
            rows=512,
            columns=512,
            instance_number=i,
            pixel_seed=i,
        )
        for i in range(count)
    ]


def plaintext_put(*, clinic, source, object_uuid, store="primary"):  # type: ignore[no-untyped-def]
    """object_put without encryption: the same durable store write, with the plaintext's SHA-256."""
    from studies.archive import objects, stores

    class Hashing:
        def __init__(self, raw):  # type: ignore[no-untyped-def]
            self.raw, self.digest, self.size = raw, hashlib.sha256(), 0

        def read(self, size: int = -1) -> bytes:
            data = self.raw.read(size)
            self.digest.update(data)
            self.size += len(data)
            return data

    key = objects.object_key_for(clinic=clinic, object_uuid=object_uuid)
    reader = Hashing(source)
    stores.get_store(store).put(key, reader)
    return objects.StoredObject(key=key, key_id="none", size_bytes=reader.size, sha256=reader.digest.hexdigest())


def run_interleaved(clinic_on, files_on: list[Path], clinic_off, files_off: list[Path]) -> None:  # type: ignore[no-untyped-def]
    """Ingest on/off alternately, one instance each, so load changes on the machine hit both equally."""
    from studies.archive import objects
    from studies.ingest import IngestOutcome, instance_ingest

    real_put = objects.object_put
    elapsed = {"on": 0.0, "off": 0.0}
    try:
        for path_on, path_off in zip(files_on, files_off, strict=True):
            for label, clinic, path, put in (
                ("on", clinic_on, path_on, real_put),
                ("off", clinic_off, path_off, plaintext_put),
            ):
                objects.object_put = put  # type: ignore[assignment]
                started = time.perf_counter()
                result = instance_ingest(clinic=clinic, source_path=str(path), source="bench")
                elapsed[label] += time.perf_counter() - started
                assert result.outcome == IngestOutcome.STORED
    finally:
        objects.object_put = real_put  # type: ignore[assignment]
    total = sum(p.stat().st_size for p in files_on)
    for label in ("on", "off"):
        seconds = elapsed[label]
        print(
            f"encryption {label:<4} {len(files_on):>6} instances  {seconds:7.2f} s  "
            f"{len(files_on) / seconds:8.1f} instances/s  {total / seconds / 1e6:7.1f} MB/s"
        )
    print(f"encryption cost: {100 * (elapsed['on'] / elapsed['off'] - 1):.1f}% more time per instance")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="instances per run (default 300)")
    parser.add_argument("--database-url", help="a scratch database to migrate and use (default: temporary SQLite)")
    parser.add_argument("--store-url", help="primary store URL (default: a temporary local folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        var_dir = Path(tmp)
        setup_django(var_dir, args.database_url, args.store_url)
        from tenants import services
        from tenants.models import User

        owner = User.objects.create_user(f"bench-{uuid.uuid4().hex[:8]}@example.org", "x")
        slug = f"bench-{uuid.uuid4().hex[:8]}"
        clinic_on = services.clinic_create(name="Bench on", slug=slug, owner=owner)
        clinic_off = services.clinic_create(name="Bench off", slug=slug + "-off", owner=owner)
        files_on = make_files(var_dir / "on", args.count)
        files_off = make_files(var_dir / "off", args.count)
        size = files_on[0].stat().st_size
        print(
            f"instance size {size / 1e6:.2f} MB, database {os.environ['DATABASE_URL'].split(':')[0]}, "
            f"store {os.environ['PRIMARY_STORE_URL'].split(':')[0]}"
        )

        # Warm up: first clinic key, imports, connections.
        warm = make_files(var_dir / "warm", 3)
        for path in warm:
            from studies.ingest import instance_ingest

            instance_ingest(clinic=clinic_on, source_path=str(path), source="bench")

        run_interleaved(clinic_on, files_on, clinic_off, files_off)


if __name__ == "__main__":
    main()

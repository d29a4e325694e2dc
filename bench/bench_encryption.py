"""Benchmark: ingest-style object writes of 0.5 MB CT-sized payloads, encryption on vs off.

Runs standalone: `.venv/bin/python bench/bench_encryption.py [--count N] [--rounds R] [--store-url URL]`.
It sets Django up itself with a temporary var folder and SQLite database (only the two tables it needs),
so it touches no other data. "on" is `object_put` (AES-256-GCM segments, SHA-256, durable write);
"off" is the same durable store write of the plaintext with its SHA-256 (what ingest would do without
encryption); "crypto only" encrypts to nowhere, to show the cipher's own cost.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

PAYLOAD_BYTES = 512 * 512 * 2 + 2_000  # one 512x512 16-bit CT slice plus its header, about 0.5 MB


def setup_django(var_dir: Path, store_url: str | None) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    os.environ["PORTAL_VAR_DIR"] = str(var_dir)
    os.environ["DATABASE_URL"] = f"sqlite:///{var_dir / 'bench.sqlite3'}"
    os.environ["CELERY_BROKER_URL"] = "memory://"
    os.environ["MASTER_KEYS"] = "bench:" + base64.b64encode(os.urandom(32)).decode()
    os.environ["PRIMARY_STORE_URL"] = store_url or (var_dir / "primary").as_uri()
    os.environ["REPLICA_STORE_URL"] = (var_dir / "replica").as_uri()
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.db import connection

    from studies.models import ClinicKey
    from tenants.models import Clinic

    # Only the tables object_put needs, so the benchmark does not depend on every app's migrations.
    with connection.schema_editor() as editor:
        editor.create_model(Clinic)
        editor.create_model(ClinicKey)


def measure(action: Callable[[int], None], count: int) -> float:
    started = time.perf_counter()
    for index in range(count):
        action(index)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="instances per round (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per mode; the median is reported")
    parser.add_argument("--store-url", help="primary store URL (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-encryption-") as temp:
        setup_django(Path(temp), args.store_url)
        from studies.archive import crypto, keys, objects, stores
        from tenants.models import Clinic

        clinic = Clinic.objects.create(name="Bench", slug="bench", ae_title="BENCH")
        store = stores.get_store("primary")
        payloads = [os.urandom(PAYLOAD_BYTES) for _ in range(8)]
        key_id, clinic_key = keys.clinic_key_get(clinic)

        def encrypted(index: int) -> None:
            objects.object_put(clinic=clinic, source=io.BytesIO(payloads[index % 8]), object_uuid=uuid.uuid4())

        def plain(index: int) -> None:
            data = payloads[index % 8]
            hashlib.sha256(data).hexdigest()
            store.put(f"clinics/{clinic.uuid}/plain/{uuid.uuid4()}", io.BytesIO(data))

        def crypto_only(index: int) -> None:
            reader = crypto.EncryptingReader(
                io.BytesIO(payloads[index % 8]),
                key_id=key_id,
                clinic_key=clinic_key,
                clinic_uuid=clinic.uuid,
                object_key=f"clinics/{clinic.uuid}/objects/{uuid.uuid4()}",
            )
            while reader.read(1024 * 1024):
                pass

        modes = {"encryption off": plain, "encryption on": encrypted, "crypto only (no store)": crypto_only}
        timings: dict[str, list[float]] = {name: [] for name in modes}
        for action in modes.values():
            action(0)  # warm up
        # Interleaved rounds, so that a noisy neighbour or a disk cache flush hits every mode alike.
        for _ in range(args.rounds):
            for name, action in modes.items():
                timings[name].append(measure(action, args.count))
        results = {name: statistics.median(values) for name, values in timings.items()}

        megabytes = args.count * PAYLOAD_BYTES / 1e6
        print(
            f"\n{args.count} instances x {PAYLOAD_BYTES / 1e6:.2f} MB per round, median of {args.rounds} rounds, "
            f"store {store.url}\n"
        )
        print(f"{'mode':<24} {'instances/s':>12} {'MB/s':>10} {'time vs off':>12}")
        baseline = results["encryption off"]
        for name, seconds in results.items():
            versus = "" if name == "encryption off" else f"{(seconds / baseline - 1) * 100:+.1f}%"
            print(f"{name:<24} {args.count / seconds:>12.1f} {megabytes / seconds:>10.1f} {versus:>12}")


if __name__ == "__main__":
    main()

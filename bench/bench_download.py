"""Benchmark: ZIP download throughput (MB/s) of a study, decrypted on the fly, through the real view.

Runs standalone: `.venv/bin/python bench/bench_download.py [--instances N] [--rounds R] [--store-url URL]`.
It sets Django up with a temporary var folder and SQLite database (all migrations), stores N CT-sized
instances (512x512, 16-bit, about 0.5 MB each) through ``instance_ingest``, then downloads the study as
the studies page does (GET .../download/, consuming the streamed response) and reports MB/s of ZIP
bytes, next to the raw decrypt rate of the same objects (``object_open`` read to the end).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path


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
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def write_instances(folder: Path, count: int) -> list[Path]:
    """Write ``count`` CT instances of one study and series, 512x512 16-bit noise (incompressible-ish)."""
    import numpy as np
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    template = dcmread(get_testdata_file("CT_small.dcm"))
    study_uid, series_uid = generate_uid(), generate_uid()
    rng = np.random.default_rng(1)
    paths = []
    for number in range(1, count + 1):
        ds = template.copy()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.Rows = ds.Columns = 512
        ds.PixelData = rng.integers(0, 4096, size=(512, 512), dtype=np.uint16).tobytes()
        path = folder / f"{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store-url", default=None, help="primary store (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
        var_dir = Path(tmp)
        setup_django(var_dir, args.store_url)
        from django.test import Client

        from studies.archive import objects
        from studies.ingest import instance_ingest
        from studies.models import Instance, Study
        from tenants.models import Membership, User
        from tenants.roles import Role
        from tenants.services import clinic_create

        owner = User.objects.create_user("bench-owner@example.org", "Bench-Password-42!")
        clinic = clinic_create(name="Bench", slug="bench", owner=owner)
        reader = User.objects.create_user("bench-reader@example.org", "Bench-Password-42!")
        Membership.objects.create(clinic=clinic, user=reader, role=Role.CLINICIAN)

        source = var_dir / "source"
        source.mkdir()
        paths = write_instances(source, args.instances)
        for path in paths:
            instance_ingest(clinic=clinic, source_path=str(path))
        study = Study.objects.for_clinic(clinic).get()
        original_mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"stored {args.instances} instances, {original_mb:.1f} MB of DICOM")

        keys = list(Instance.objects.for_clinic(clinic).values_list("object_key", flat=True))
        decrypt_rates = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            for key in keys:
                with objects.object_open(clinic=clinic, key=key) as stream:
                    while stream.read(1024 * 1024):
                        pass
            decrypt_rates.append(original_mb / (time.perf_counter() - started))

        client = Client(HTTP_HOST="localhost")
        client.force_login(reader)
        zip_rates = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            response = client.get(f"/c/{clinic.slug}/studies/{study.uuid}/download/")
            size = sum(len(chunk) for chunk in response.streaming_content)
            elapsed = time.perf_counter() - started
            zip_rates.append(size / 1e6 / elapsed)
        # Check the archive's end (central directory) is complete and lists every instance.
        assert response.status_code == 200
        body = b"".join(client.get(f"/c/{clinic.slug}/studies/{study.uuid}/download/").streaming_content)
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            assert len(archive.namelist()) == args.instances
        print(f"decrypt only:  {statistics.median(decrypt_rates):7.1f} MB/s (median of {args.rounds})")
        print(f"ZIP download:  {statistics.median(zip_rates):7.1f} MB/s (median of {args.rounds}, {size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()

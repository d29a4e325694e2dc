"""Benchmark: migrating an archive in from a local Orthanc (Debian's package) by C-GET, C-MOVE or WADO-RS.

Runs standalone: `.venv/bin/python bench/bench_migration.py [--instances 1000] [--studies 10] [--method WADO-RS]`
(WADO-RS: Orthanc's DICOMweb plugin as a DICOMweb source, QIDO-RS to list).
Orthanc is filled over its REST API with 0.5 MB CT slices, then the portal's migration job (the same
service the Celery task runs, with encryption and the local stores) pulls them in against PostgreSQL
(BENCH_DATABASE_URL, default .../portal_bench_migration). Prints instances per second and the count of
missing and duplicate instances after the job.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/portal_bench_migration"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--method", choices=["C-GET", "C-MOVE", "WADO-RS"], default="C-GET")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-migration-"))
    sys.path.insert(0, str(ROOT))
    from bench.bench_anonymize import ct_files
    from bench.common import django_setup

    django_setup(os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB), str(work / "var"))
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    from studies.dimse import nodes
    from studies.dimse.scp import scp_start
    from studies.models import Instance
    from studies.outbound import services
    from studies.outbound.models import MigrationJob
    from tenants.models import Clinic
    from tests.peers import free_tcp_port, running_orthanc

    clinic = Clinic.objects.create(name="Bench", slug="bench", ae_title="BENCH", quota_bytes=10**13)
    per_study = max(1, args.instances // args.studies)
    template = ct_files(1, work)[0]
    scp_port = free_tcp_port()
    server = scp_start(host="127.0.0.1", port=scp_port, ae_title="PACSPORTAL", block=False)
    with running_orthanc(work / "orthanc", portal_ae="BENCH", portal_dicom_port=scp_port) as orthanc:
        started = time.perf_counter()
        for _study in range(args.studies):
            ds = dcmread(template)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
            for number in range(per_study):
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                ds.InstanceNumber = number + 1
                path = work / "one.dcm"
                ds.save_as(path, enforce_file_format=True)
                orthanc.upload([path])
        print(f"filled Orthanc with {args.studies * per_study} instances in {time.perf_counter() - started:.1f} s")
        if args.method == "WADO-RS":
            job = MigrationJob.objects.create(clinic=clinic, dicomweb_url=f"{orthanc.url}/dicom-web",
                                              method=args.method)
        else:
            node = nodes.dicom_node_create(clinic=clinic, ae_title=orthanc.ae_title, host="127.0.0.1",
                                           port=orthanc.dicom_port)
            job = MigrationJob.objects.create(clinic=clinic, node=node, method=args.method)
        started = time.perf_counter()
        while services.migration_run(job=job, slice_seconds=3600):
            job.refresh_from_db()
        elapsed = time.perf_counter() - started
        job.refresh_from_db()
    server.shutdown()
    stored = Instance.objects.for_clinic(clinic).count()
    distinct = Instance.objects.for_clinic(clinic).values("sop_instance_uid").distinct().count()
    print(f"{args.method}: {job.instances_done} instances in {elapsed:.1f} s = {job.instances_done / elapsed:.1f}"
          f" instances/s; status {job.status}, missing {job.instances_failed}, duplicates {stored - distinct}")


if __name__ == "__main__":
    main()

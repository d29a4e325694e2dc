"""Benchmark: anonymization throughput for 0.5 MB CT instances.

Runs standalone: `.venv/bin/python bench/bench_anonymize.py [--instances 200]`.
Two figures: the PS3.15 engine alone (read, de-identify with every option's rules, write) on files in
a temporary folder, and whole jobs as the worker runs them (decrypt the stored instance, de-identify,
ingest the result encrypted, in the worker's batches of ANONYMIZATION_JOB_BATCH, in one process or, with
`--processes N`, in a pool as the worker's processes take them) against PostgreSQL (BENCH_DATABASE_URL,
default .../portal_bench_anonymize). CPU time per instance is printed too (ours and the PostgreSQL
backends'): compare changes by it on a busy machine.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/portal_bench_anonymize"


def setup(database_url: str, var_dir: str) -> None:
    sys.path.insert(0, str(ROOT))
    from bench.common import django_setup

    django_setup(database_url, var_dir)


def ct_files(count: int, folder: Path) -> list[Path]:
    """Write ``count`` 512x512 16-bit CT slices (about 0.5 MB each) of one study."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for number in range(1, count + 1):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, generate_uid()
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "DOE^JANE", "MRN-1234", "19700101", "F"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260101", "101500", "ACC-1"
        ds.InstitutionName, ds.ReferringPhysicianName, ds.StationName = "General Hospital", "HOUSE^G", "CT01"
        ds.StudyDescription, ds.SeriesDescription, ds.Modality = "CT CHEST", "AXIAL", "CT"
        ds.SeriesNumber, ds.InstanceNumber = 1, number
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
        ds.PixelData = np.random.default_rng(number).integers(0, 2000, (512, 512)).astype("int16").tobytes()
        path = folder / f"ct-{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def backend_cpu() -> float:
    """CPU seconds so far of this process's PostgreSQL backend (same machine), 0 if it cannot be read."""
    from bench.common import database_cpu_seconds

    found = database_cpu_seconds()
    return found[1] if found else 0.0


def _run_batch(kwargs: dict) -> float:
    from django.db import connection

    from studies.anonymize import tasks

    try:
        started = backend_cpu()
        tasks.anonymization_instances(**kwargs)
        return backend_cpu() - started
    finally:
        connection.close()


def run_in_processes(calls: list[dict], processes: int) -> float:
    """Run the batch messages in a pool of forked processes, each taking the next message when free
    (a prefork worker with prefetch 1 does the same); return the CPU seconds of their database backends."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from django.db import connections

    connections.close_all()  # a forked child must open its own connection
    with ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("fork")) as pool:
        return sum(pool.map(_run_batch, calls))


def children_cpu() -> float:
    """CPU time of the pool's processes (counted once they have exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--processes", type=int, default=1,
                        help="run the job's batch messages in this many processes, as a worker's pool does")
    parser.add_argument("--profile", action="store_true", help="print where the jobs' CPU time goes (cProfile)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-anonymize-") as var_dir:
        setup(os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB), var_dir)
        from studies.anonymize import services, tasks
        from studies.anonymize.profile import Option
        from studies.ingest import instance_ingest
        from tenants import services as tenant_services
        from tenants.models import User

        paths = ct_files(options.instances, Path(var_dir))
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        owner = User.objects.create_user("bench@anonymize.example", "Bench-Anonymize-2026!")
        clinic = tenant_services.clinic_create(name="Bench anonymize", slug="bench-anonymize", owner=owner)
        project = services.project_create(clinic=clinic, name="Bench", pseudonym_prefix="BENCH",
                                          options=[Option.RETAIN_LONG_MODIFIED_DATES, Option.CLEAN_DESCRIPTORS])

        started = time.perf_counter()
        for path in paths:
            services.file_anonymize(project=project, source_path=str(path), dest_path=str(path) + ".anon")
        engine = time.perf_counter() - started

        study = None
        for path in paths:
            study = instance_ingest(clinic=clinic, source_path=str(path)).instance.series.study
        job = services.job_create(clinic=clinic, project=project, studies=[study])
        started, cpu_started = time.perf_counter(), time.process_time() - children_cpu()
        # As a worker runs the job: job_start queues one message per batch of instances; run each here.
        with mock.patch.object(tasks.anonymization_instances, "delay") as queued:
            tasks.anonymization_job_start(clinic_id=clinic.pk, job_id=job.pk)
        # CPU time by default (the machine is shared); PROFILE_CLOCK=wall shows where the job waits.
        clock = time.perf_counter if os.environ.get("PROFILE_CLOCK") == "wall" else time.process_time
        profiler = cProfile.Profile(clock) if options.profile else None
        if profiler is not None:
            profiler.enable()
        calls = [call.kwargs for call in queued.call_args_list]
        if options.processes > 1:
            database_cpu = run_in_processes(calls, options.processes)
        else:
            database_started = backend_cpu()
            for kwargs in calls:
                tasks.anonymization_instances(**kwargs)
            database_cpu = backend_cpu() - database_started
        if profiler is not None:
            profiler.disable()
            pstats.Stats(profiler).sort_stats(os.environ.get("PROFILE_SORT", "tottime")).print_stats(os.environ.get("PROFILE_FILTER", ""), 30)
        whole, cpu = time.perf_counter() - started, time.process_time() - cpu_started + children_cpu()
        job.refresh_from_db()
    print(f"{options.instances} CT instances, {megabytes / options.instances:.2f} MB each")
    print(f"engine (read, de-identify, write): {options.instances / engine:.0f} instances/s, {megabytes / engine:.0f} MB/s")
    print(f"jobs (decrypt, de-identify, store encrypted, index): {options.instances / whole:.1f} instances/s "
          f"({job.done} done, {job.failed} failed, {len(calls)} batches, {options.processes} process(es))")
    print(f"  process CPU per instance: {cpu / options.instances * 1000:.1f} ms (load-independent; "
          f"this process and its pool), PostgreSQL backends {database_cpu / options.instances * 1000:.1f} ms")
    print(f"  load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()

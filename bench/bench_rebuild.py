"""rebuild_index throughput: fill a clinic fast, drop its index, rebuild it from the replica alone.

    .venv/bin/python bench/bench_rebuild.py [--instances 10000] [--jobs 2] [--database-url postgres://.../x]
        [--modes sidecars,verify,decode] [--sidecar-batch 50] [--interrupt-after 3000]

With ``--database-url`` the database named there is DROPPED and re-created (give it a name of its own);
without it, SQLite in a temporary folder. Stores are local folders in a temporary folder. The fill is
``dr_drill.fast_fill`` (objects on both stores, ingest's own index writer, one index sidecar per
``--sidecar-batch`` instances as the replication worker writes them; setup only, not measured).

Each mode drops the index and rebuilds it with ``manage.py rebuild_index``: ``sidecars`` (the default
command: index sidecars, nothing parsed), ``verify`` (``--verify``: sidecars, and every object decrypted and
digested), ``decode`` (``--no-sidecars``: every object decrypted and parsed, the path taken for objects no
sidecar describes). ``--interrupt-after N`` kills the first run of each mode after N instances are indexed
and runs it again, to show it resumes. Each rebuilt index is compared with the one the fill wrote (studies,
series, instances, counters, metadata). Prints wall time and CPU time: this process, its worker processes
(``RUSAGE_CHILDREN``) and, on a local PostgreSQL, the database backend serving this process (/proc).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import database_cpu_seconds  # noqa: E402
from dr_drill import fast_fill, make_clinic, make_files, recreate_database, setup_django  # noqa: E402

MODES = {"sidecars": [], "verify": ["--verify"], "decode": ["--no-sidecars"]}


def index_drop() -> None:
    from studies.archive import keys
    from studies.models import ClinicKey, Instance, Patient, Series, Study
    from tenants.models import Clinic

    Instance.objects.all().delete()
    Series.objects.all().delete()
    Study.objects.all().delete()
    Patient.objects.all().delete()
    ClinicKey.objects.all().delete()
    Clinic.objects.update(used_bytes=0)
    keys.key_cache_clear()


def index_snapshot(clinic) -> dict:  # type: ignore[no-untyped-def]
    """What the index answers, without row ids and timestamps: a rebuild must give it back unchanged."""
    from studies.models import Instance, Series, Study

    return {
        "used_bytes": type(clinic).objects.get(pk=clinic.pk).used_bytes,
        "studies": sorted(Study.objects.for_clinic(clinic).values_list(
            "study_instance_uid", "patient__patient_id", "patient__patient_name", "study_date", "accession_number",
            "study_description", "number_of_series", "number_of_instances", "size_bytes", "modalities_in_study",
            "body_part_examined", "deleted_at")),
        "series": sorted(Series.objects.for_clinic(clinic).values_list(
            "series_instance_uid", "study__study_instance_uid", "modality", "series_number", "number_of_instances")),
        # Headers compared by digest: 10,000 of them as dicts, twice, would take gigabytes.
        "instances": {
            row[0]: (*row[1:-1], hashlib.sha256(json.dumps(row[-1], sort_keys=True).encode()).hexdigest())
            for row in Instance.objects.for_clinic(clinic).values_list(
                "sop_instance_uid", "uuid", "object_key", "sha256", "size_bytes", "key_id", "instance_number",
                "rows", "columns", "transfer_syntax_uid", "series__series_instance_uid", "metadata").iterator()
        },
    }


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(mode: str, args: argparse.Namespace, clinic, snapshot: dict) -> None:  # type: ignore[no-untyped-def]
    from django.core.management import call_command

    from studies.backup import recovery
    from studies.models import Instance

    index_drop()
    devnull = open(os.devnull, "w")  # noqa: SIM115 - progress output is not part of the figures
    interrupted = 0
    if args.interrupt_after:
        stop_at = args.interrupt_after

        def stop(message: str) -> None:
            if Instance.objects.count() >= stop_at:
                raise KeyboardInterrupt

        try:
            recovery.index_rebuild(jobs=args.jobs, progress=stop, use_sidecars=mode != "decode",
                                   verify=mode == "verify")
        except KeyboardInterrupt:
            interrupted = Instance.objects.count()
    database_before = database_cpu_seconds()
    cpu = cpu_seconds()
    load = os.getloadavg()[0]
    started = time.perf_counter()
    call_command("rebuild_index", "--jobs", str(args.jobs), *MODES[mode], stdout=devnull)
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu
    database_after = database_cpu_seconds()
    database_cpu = None
    if database_before is not None and database_after is not None:
        # With --jobs > 1 the rebuild reconnects before forking its workers: then all of the new backend's
        # time is the rebuild's.
        same = database_before[0] == database_after[0]
        database_cpu = database_after[1] - (database_before[1] if same else 0.0)
    rebuilt = index_snapshot(clinic)
    for part in ("used_bytes", "studies", "series", "instances"):
        assert rebuilt[part] == snapshot[part], f"{mode}: the rebuilt index differs from the original ({part})"
    total = len(snapshot["instances"])
    done = total - interrupted
    if not done:
        # Sidecar rows go in 2,000 per transaction: an interrupt can only land between those batches.
        print(f"  {mode:<8} the interrupted run had already indexed all {total} instances; nothing left to resume")
        return
    database = f", database backend {database_cpu * 1000 / done:.2f} ms" if database_cpu is not None else ""
    print(f"  {mode:<8} rebuild_index --jobs {args.jobs} {' '.join(MODES[mode])}: {seconds:.1f} s for {done} "
          f"instances ({done / seconds:.0f} instances/s wall); CPU {cpu * 1000 / done:.2f} ms/instance in this "
          f"process and its workers{database}; load average {load:.1f} at start"
          + (f"; resumed after an interrupted run had indexed {interrupted}" if interrupted else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--database-url")
    parser.add_argument("--modes", default="sidecars,verify,decode")
    parser.add_argument("--sidecar-batch", type=int, default=50,
                        help="instances per index sidecar in the fill (the replication worker's message size)")
    parser.add_argument("--interrupt-after", type=int, default=0)
    args = parser.parse_args()
    modes = [mode for mode in args.modes.split(",") if mode]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose among {sorted(MODES)}")
    if args.database_url:
        recreate_database(args.database_url)
    temp = Path(tempfile.mkdtemp(prefix="bench-rebuild-"))
    try:
        setup_django(temp, args.database_url, None)
        from django.conf import settings

        clinic = make_clinic("rebuild")
        paths = make_files(temp / "files", args.instances)
        fill_seconds = fast_fill(clinic, paths, jobs=args.jobs, sidecar_batch=args.sidecar_batch)
        snapshot = index_snapshot(clinic)
        engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        print(f"rebuild_index bench: {len(snapshot['instances'])} instances ({os.path.getsize(paths[0])} bytes "
              f"each), {engine}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        print(f"  fast fill (setup, both stores, one sidecar per {args.sidecar_batch} instances): "
              f"{fill_seconds:.1f} s")
        for mode in modes:
            run(mode, args, clinic, snapshot)
        print(f"  load average after: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()

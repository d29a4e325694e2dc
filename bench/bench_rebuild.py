"""rebuild_index throughput: fill a clinic fast, drop its index, rebuild it from the replica alone.

    .venv/bin/python bench/bench_rebuild.py [--instances 10000] [--jobs 2] [--database-url postgres://.../x]
        [--interrupt-after 3000]

With ``--database-url`` the database named there is DROPPED and re-created (give it a name of its own);
without it, SQLite in a temporary folder. Stores are local folders in a temporary folder. The fill is
``dr_drill.fast_fill`` (objects on both stores, ingest's own index writer; setup only, not measured). ``--interrupt-after N`` kills the first rebuild after N instances are
indexed and runs it again, to show it resumes. Prints wall time and this process's CPU time (the
workers' CPU time is added from ``resource.getrusage(RUSAGE_CHILDREN)``).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dr_drill import fast_fill, make_clinic, make_files, recreate_database, setup_django  # noqa: E402


def index_drop() -> None:
    from studies.archive import keys
    from studies.models import ClinicKey, Instance, Patient, Series, Study

    Instance.objects.all().delete()
    Series.objects.all().delete()
    Study.objects.all().delete()
    Patient.objects.all().delete()
    ClinicKey.objects.all().delete()
    keys.key_cache_clear()


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--database-url")
    parser.add_argument("--interrupt-after", type=int, default=0)
    args = parser.parse_args()
    if args.database_url:
        recreate_database(args.database_url)
    temp = Path(tempfile.mkdtemp(prefix="bench-rebuild-"))
    try:
        setup_django(temp, args.database_url, None)
        from django.conf import settings
        from django.core.management import call_command

        from studies.backup import recovery
        from studies.models import Instance

        clinic = make_clinic("rebuild")
        paths = make_files(temp / "files", args.instances)
        fill_seconds = fast_fill(clinic, paths, jobs=args.jobs)
        snapshot = dict(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", "sha256"))
        engine = settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1]
        print(f"rebuild_index bench: {len(snapshot)} instances, {engine}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"  fast fill (setup, both stores): {fill_seconds:.1f} s ({len(snapshot) / fill_seconds:.0f}/s)")
        index_drop()
        devnull = open(os.devnull, "w")  # noqa: SIM115 - progress output is not part of the figures
        if args.interrupt_after:
            stop_at = args.interrupt_after

            def stop(message: str) -> None:
                if Instance.objects.count() >= stop_at:
                    raise KeyboardInterrupt

            try:
                recovery.index_rebuild(jobs=args.jobs, progress=stop)
            except KeyboardInterrupt:
                print(f"  first run interrupted with {Instance.objects.count()} instances indexed")
        cpu = cpu_seconds()
        started = time.perf_counter()
        call_command("rebuild_index", "--jobs", str(args.jobs), stdout=devnull)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - cpu
        rebuilt = dict(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", "sha256"))
        assert rebuilt == snapshot, "the rebuilt index differs from the original"
        done = len(snapshot) - (args.interrupt_after if args.interrupt_after else 0)
        print(f"  rebuild_index --jobs {args.jobs}: {seconds:.1f} s for {len(snapshot)} instances "
              f"({len(snapshot) / seconds:.0f} instances/s wall), CPU {cpu:.1f} s "
              f"({len(snapshot) / cpu:.0f} instances per CPU-second; ~{done} indexed in this run)")
        print(f"  load average after: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()

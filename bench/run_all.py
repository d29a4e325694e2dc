"""Run every benchmark, one after another, and say which ones failed (what `make bench` runs).

Usage: ``.venv/bin/python bench/run_all.py [--full] [--only NAME,...]``

Each benchmark runs in its own process, as it would standalone, so one that fails does not stop the rest.
They run one at a time because the machine's cores are what they measure. The default sizes are small
enough for a look at every figure in well under an hour; ``--full`` uses each benchmark's own defaults,
which are the issues' targets (100,000 studies, 10,000 instances, a 2 GB upload) and take hours.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent

# name -> arguments for the quick run; the full run passes none (each script's defaults).
QUICK_ARGUMENTS: dict[str, list[str]] = {
    "bench_orthanc": ["--instances", "200"],
    "bench_ingest": ["--count", "100"],
    "bench_dimse": ["--count", "200", "--database-url", "sqlite"],
    "bench_encryption": ["--count", "100"],
    "bench_download": ["--instances", "50"],
    "bench_anonymize": ["--instances", "100"],
    "bench_rebuild": ["--instances", "2000"],
    "bench_search": ["--studies", "10000", "--rounds", "10"],
    "bench_dicomweb": ["--studies", "10000", "--instances", "200", "--queries", "100"],
    "bench_migration": ["--instances", "500"],
    "bench_viewer": ["--rounds", "3"],
    "bench_upload_memory": ["--size-mb", "512"],
    "bench_replication": ["--instances", "500"],
    "dr_drill": ["--instances", "1000"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="each benchmark at its own (issue-sized) defaults")
    parser.add_argument("--only", default="", help="comma-separated names, e.g. bench_orthanc,bench_search")
    args = parser.parse_args()
    names = [name for name in args.only.split(",") if name] or list(QUICK_ARGUMENTS)
    unknown = sorted(set(names) - set(QUICK_ARGUMENTS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(QUICK_ARGUMENTS)}")
    failed: list[str] = []
    for name in names:
        command = [sys.executable, str(BENCH / f"{name}.py"), *([] if args.full else QUICK_ARGUMENTS[name])]
        print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        returncode = subprocess.call(command)
        print(f"=== {name}: exit {returncode} after {time.monotonic() - started:.0f} s", flush=True)
        if returncode != 0:
            failed.append(name)
    print(f"\n{len(names) - len(failed)} of {len(names)} benchmarks finished", end="")
    print(f"; failed: {', '.join(failed)}" if failed else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

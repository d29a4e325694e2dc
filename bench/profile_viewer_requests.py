"""Profile the DICOMweb requests a viewer makes for a signed-in reader, in process, by CPU time.

Sets up the portal as `profile_ingest.py` does (scratch SQLite by default, encryption on, DEBUG as the
environment sets it), stores one series of ``--instances`` 0.53 MB CT slices, signs a reader in with a
browser session (as OHIF and our light viewer call DICOMweb) and sends, ``--rounds`` times each, the
requests of an OHIF opening: its study search, the series search, the search for the patient's other
studies, the series metadata and one frame. Prints, per request: the process's CPU time and wall time,
and the statements it ran (after the first, which may write the session). With ``--profile NAME`` the
costliest calls of that request under cProfile. CPU time is what a loaded machine distorts least.

Run: `.venv/bin/python bench/profile_viewer_requests.py [--instances 300] [--rounds 100] [--profile frame]`
(with DEBUG=0 and the settings `bench.common.production_environment` lists, to measure as deployed).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
# What OHIF 3 asks for (its includefield lists), copied from a real opening's requests.
STUDY_FIELDS = "includefield=00081030%2C00080060%2C00080090%2C00100030"
SERIES_FIELDS = "includefield=00080021%2C00080031%2C0008103E%2C00200011"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=300, help="slices in the series (default 300)")
    parser.add_argument("--rounds", type=int, default=100, help="times each request is sent (default 100)")
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL (default: SQLite in a scratch folder)")
    parser.add_argument("--profile", default=None, help="one request's name: print its costliest calls")
    args = parser.parse_args()

    from bench.profile_ingest import setup

    var, slug, _, _ = setup(args.database_url)
    try:
        run(var, slug, args)
    finally:
        shutil.rmtree(var, ignore_errors=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


def run(var: Path, slug: str, args: argparse.Namespace) -> None:
    from django.db import connection
    from django.test import Client

    from bench.bench_orthanc import write_files
    from bench.profile_ingest import Statements
    from studies.ingest.origin import Origin
    from studies.ingest.pipeline import instances_ingest
    from studies.models import Instance
    from tenants.models import Clinic, User

    study_uid = "1.2.826.0.1.3680043.8.498." + str(uuid.uuid4().int)[:20]
    files = write_files(var / "in", args.instances, study_uid)
    clinic = Clinic.objects.get(slug=slug)
    for start in range(0, len(files), 50):
        instances_ingest(clinic=clinic, paths=[str(p) for p in files[start : start + 50]],
                         origin=Origin.system(source="bench", user=None))
    instance = Instance.objects.filter(series__study__study_instance_uid=study_uid).select_related("series").first()
    assert instance is not None
    series_uid = instance.series.series_instance_uid
    patient_id = Instance.objects.filter(pk=instance.pk).values_list("series__study__patient__patient_id", flat=True)[0]
    base = f"/dicomweb/{slug}"
    requests = {
        "study search": f"{base}/studies?limit=101&offset=0&fuzzymatching=false&{STUDY_FIELDS}&StudyInstanceUID={study_uid}",
        "series search": f"{base}/studies/{study_uid}/series?{SERIES_FIELDS}",
        "patient search": f"{base}/studies?00100020={patient_id}&limit=101&offset=0&fuzzymatching=false&{STUDY_FIELDS}",
        "metadata": f"{base}/studies/{study_uid}/series/{series_uid}/metadata",
        "frame": f"{base}/studies/{study_uid}/series/{series_uid}/instances/{instance.sop_instance_uid}/frames/1",
    }
    client = Client()
    client.force_login(User.objects.get(email__startswith=slug))

    def send(name: str) -> None:
        accept = FRAME_ACCEPT if name == "frame" else "application/dicom+json"
        response = client.get(requests[name], HTTP_ACCEPT=accept, HTTP_HOST="127.0.0.1")
        if response.status_code != 200:
            raise RuntimeError(f"{name} answered {response.status_code}: {response.content[:200]!r}")
        b"".join(response.streaming_content) if response.streaming else response.content  # noqa: B018

    for name in requests:
        send(name)  # the first: the session's clinic, caches, compiled statements
        statements = Statements()
        with connection.execute_wrapper(statements):
            send(name)
        profiler = cProfile.Profile(time.process_time) if args.profile == name else None
        started, cpu_started = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        for _ in range(args.rounds):
            send(name)
        if profiler is not None:
            profiler.disable()
        cpu = (time.process_time() - cpu_started) / args.rounds * 1000
        wall = (time.perf_counter() - started) / args.rounds * 1000
        print(f"{name:15s} CPU {cpu:6.2f} ms, wall {wall:6.2f} ms, {sum(statements.count.values())} statements")
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()

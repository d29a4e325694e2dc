"""Benchmark: studies-page search latency (p50/p95) on 100,000 studies in PostgreSQL.

Runs standalone: `.venv/bin/python bench/bench_search.py [--studies N] [--rounds R] [--keep]`.
It uses DATABASE_URL (PostgreSQL; default postgres://postgres@127.0.0.1:5432/portal_bench_search, created
if missing), applies migrations, fills a fresh clinic with N studies (and a second clinic with N/5,
so that tenant scoping is part of the measurement) through bulk_create, then times what the studies
page does for each search: the count and the first page of 25 rows, through ``studies.selectors``.
It prints each query's plan (to check that indexes are used) and deletes its clinics unless --keep.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from datetime import date, timedelta
from datetime import time as dtime
from pathlib import Path

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/portal_bench_search"
PAGE_SIZE = 25
COUNT_CAP = 1000  # as the studies page: "more than 1,000 match" instead of counting them all
FAMILY = ["SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS", "RODRIGUEZ", "MARTINEZ",
          "HERNANDEZ", "LOPEZ", "GONZALEZ", "WILSON", "ANDERSON", "THOMAS", "TAYLOR", "MOORE", "JACKSON", "MARTIN",
          "LEE", "PEREZ", "THOMPSON", "WHITE", "HARRIS", "SANCHEZ", "CLARK", "RAMIREZ", "LEWIS", "ROBINSON"]
GIVEN = ["JAMES", "MARY", "ROBERT", "PATRICIA", "JOHN", "JENNIFER", "MICHAEL", "LINDA", "DAVID", "ELIZABETH",
         "WILLIAM", "BARBARA", "RICHARD", "SUSAN", "JOSEPH", "JESSICA", "THOMAS", "SARAH", "CHARLES", "KAREN"]
MODALITIES = ["CT", "MR", "CR", "DX", "US", "MG", "PT\\CT", "NM", "XA", "CT\\SR"]
DESCRIPTIONS = ["CT HEAD W/O CONTRAST", "MRI BRAIN W AND W/O", "CHEST 2 VIEWS", "ABDOMEN US COMPLETE",
                "MAMMO SCREENING BILAT", "PET/CT WHOLE BODY", "KNEE MRI LEFT", "CT CHEST ANGIO", "LUMBAR SPINE MRI",
                "PELVIS XR", "CORONARY ANGIOGRAPHY", "BONE SCAN"]


def setup_django(database_url: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("CELERY_BROKER_URL", "memory://")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    _database_create(database_url)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _database_create(database_url: str) -> None:
    from urllib.parse import urlparse

    import psycopg

    parsed = urlparse(database_url)
    name = parsed.path.lstrip("/")
    admin_url = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as connection:
        if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            connection.execute(f'CREATE DATABASE "{name}"')


def populate(*, clinic, studies: int, seed: int) -> None:
    """Bulk-create patients (about two studies each) and studies with realistic spreads of values."""
    from django.utils import timezone

    from studies.models import Patient, Study

    rng = random.Random(seed)
    patients = [
        Patient(
            clinic=clinic,
            patient_id=f"{seed}-{index:07d}",
            patient_name=f"{rng.choice(FAMILY)}{rng.choice(['', 'SON', 'ER', 'S'])}^{rng.choice(GIVEN)}",
            patient_birth_date=date(1930, 1, 1) + timedelta(days=rng.randrange(90 * 365)),
            patient_sex=rng.choice("MF"),
        )
        for index in range(max(1, studies // 2))
    ]
    Patient.objects.bulk_create(patients, batch_size=5000)
    patients = list(Patient.objects.for_clinic(clinic).only("id"))
    now = timezone.now()
    batch = []
    for index in range(studies):
        batch.append(Study(
            clinic=clinic,
            patient=rng.choice(patients),
            study_instance_uid=f"1.2.826.0.1.3680043.10.{seed}.{index}",
            study_date=date(2010, 1, 1) + timedelta(days=rng.randrange(15 * 365)),
            study_time=dtime(rng.randrange(24), rng.randrange(60)),
            accession_number=f"A{seed}{index:08d}",
            study_description=rng.choice(DESCRIPTIONS),
            modalities_in_study=rng.choice(MODALITIES),
            number_of_series=rng.randrange(1, 8),
            number_of_instances=rng.randrange(1, 800),
            size_bytes=rng.randrange(1, 2_000_000_000),
            created_at=now - timedelta(minutes=index),
            # About 1% in the trash, which every search leaves out.
            deleted_at=now if rng.random() < 0.01 else None,
        ))
        if len(batch) == 5000:
            Study.objects.bulk_create(batch)
            batch = []
    Study.objects.bulk_create(batch)


def searches(seed: int) -> dict[str, dict]:
    from studies.selectors import StudySearch

    return {
        "all, newest first": StudySearch(),
        "name prefix 'smi'": StudySearch(patient_name="smi"),
        "name given 'mary'": StudySearch(patient_name="mary"),
        "name wildcard 'JOHN*^MI*'": StudySearch(patient_name="JOHN*^MI*"),
        "name wildcard '*SON^?ARY'": StudySearch(patient_name="*SON^?ARY"),
        "patient id exact": StudySearch(patient_id=f"{seed}-0001234"),
        "accession exact": StudySearch(accession_number=f"A{seed}00012345"),
        "date range (1 month)": StudySearch(date_from=date(2020, 3, 1), date_to=date(2020, 3, 31)),
        "modality MR": StudySearch(modality="MR"),
        "modality CT + year": StudySearch(modality="CT", date_from=date(2019, 1, 1), date_to=date(2019, 12, 31)),
        "description 'brain'": StudySearch(description="brain"),
        "sort by patient": StudySearch(sort="patient"),
        "sort by stored": StudySearch(sort="-created"),
    }


def time_page(*, clinic, search) -> float:
    """What the studies page does: count the matches and fetch the first page with patients."""
    from studies import selectors

    started = time.perf_counter()
    queryset = selectors.study_list(clinic=clinic, search=search)
    selectors.study_count(queryset, cap=COUNT_CAP)
    rows = list(queryset[:PAGE_SIZE])
    for row in rows:
        _ = row.patient.patient_name
    return (time.perf_counter() - started) * 1000


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=30, help="timed runs of each search")
    parser.add_argument("--keep", action="store_true", help="keep the generated clinics")
    parser.add_argument("--plans", action="store_true", help="print EXPLAIN ANALYZE of each search")
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DB
    if not database_url.startswith("postgres"):
        sys.exit("bench_search needs PostgreSQL: set DATABASE_URL=postgres://...")
    setup_django(database_url)
    from django.db import connection

    from studies.models import Patient, Study
    from tenants.models import Clinic

    tag = uuid.uuid4().hex[:8]
    clinic = Clinic.objects.create(name=f"Bench {tag}", slug=f"bench-{tag}", ae_title=f"B{tag}".upper()[:16])
    neighbour = Clinic.objects.create(name=f"Bench {tag} b", slug=f"bench-{tag}-b", ae_title=f"C{tag}".upper()[:16])
    try:
        started = time.perf_counter()
        populate(clinic=clinic, studies=args.studies, seed=1)
        populate(clinic=neighbour, studies=args.studies // 5, seed=2)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE studies_patient")
            cursor.execute("ANALYZE studies_study")
        print(f"generated {args.studies:,} studies (+{args.studies // 5:,} in another clinic) "
              f"in {time.perf_counter() - started:.1f} s")

        all_times: list[float] = []
        print(f"\n{'search':32} {'matches':>8} {'p50 ms':>8} {'p95 ms':>8}")
        for label, search in searches(seed=1).items():
            time_page(clinic=clinic, search=search)  # warm the cache, as a busy server would be
            times = [time_page(clinic=clinic, search=search) for _ in range(args.rounds)]
            all_times.extend(times)
            from studies import selectors

            matches = selectors.study_list(clinic=clinic, search=search).count()
            print(f"{label:32} {matches:>8,} {statistics.median(times):>8.1f} {percentile(times, 0.95):>8.1f}")
            if args.plans:
                queryset = selectors.study_list(clinic=clinic, search=search)[:PAGE_SIZE]
                print("    " + queryset.explain(analyze=True).replace("\n", "\n    "))
        print(f"\nall searches: p50 {statistics.median(all_times):.1f} ms, p95 {percentile(all_times, 0.95):.1f} ms "
              f"({len(all_times)} page loads, {args.studies:,} studies)")
    finally:
        if not args.keep:
            for target in (clinic, neighbour):
                Study.objects.for_clinic(target).delete()
                Patient.objects.for_clinic(target).delete()
                target.delete()


if __name__ == "__main__":
    main()

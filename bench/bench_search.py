"""Benchmark: search latency (p50/p95) of the studies page and QIDO-RS on 100,000 or 1,000,000 studies.

Runs standalone: `.venv/bin/python bench/bench_search.py [--studies N] [--rounds R] [--keep] [--plans]`.
It runs with the deployed settings (DEBUG off) and uses DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/portal_bench_search, created if missing; ``sqlite:///path`` measures
SQLite), applies migrations, fills a fresh clinic with N studies
of about N/2 patients, one series each (and a second clinic with N/5, so that tenant scoping is part
of the measurement), then times, for each search, what the studies page does (the capped count and
the first page of 25 rows with patients, through ``studies.browse.selectors``) and what QIDO-RS does (parse
the query, search, answer DICOM JSON of up to 100 studies, through ``studies.dicomweb.qido``), each
inside the search time budget. On PostgreSQL the index is filled by SQL straight from
``generate_series`` (1,000,000 studies in a few minutes); elsewhere through bulk_create. The tables
are analyzed (and vacuumed, on PostgreSQL) after the load, as ``rebuild_index`` does. It deletes its clinics
unless --keep.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import statistics
import sys
import time
import uuid
from datetime import date, timedelta
from datetime import time as dtime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import database_create_if_missing, production_environment  # noqa: E402

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
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("CELERY_BROKER_URL", "memory://")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    # As deployed (DEBUG off): the default run's debug cursor logs every statement, which production does not.
    for name, value in production_environment("https://pacs.example").items():
        os.environ.setdefault(name, value)
    if database_url.startswith("postgres"):
        database_create_if_missing(database_url)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _sql_array(values: list[str]) -> str:
    return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def populate_sql(*, clinic, studies: int, seed: int) -> None:
    """Fill the index straight in PostgreSQL: patients, studies and one series each from generate_series.

    Values are spread by multiplicative hashing of the row number, as random as the benchmark needs.
    """
    from django.db import connection

    patients = max(1, studies // 2)
    h = "((i::bigint * {k} + {seed}) % 2147483647)"
    pick = lambda values, k: f"({_sql_array(values)})[1 + {h.format(k=k, seed=seed)} % {len(values)}]"  # noqa: E731
    with connection.cursor() as cursor:
        cursor.execute(f"""
            INSERT INTO studies_patient (uuid, clinic_id, patient_id, issuer_of_patient_id, patient_name,
                                         patient_birth_date, patient_sex, created_at)
            SELECT gen_random_uuid(), {clinic.pk}, '{seed}-' || lpad(i::text, 7, '0'), '',
                   {pick(FAMILY, 2654435761)} || {pick(['', 'SON', 'ER', 'S'], 40503)} || '^' || {pick(GIVEN, 97)},
                   date '1930-01-01' + ({h.format(k=7919, seed=seed)} % 32850)::int,
                   CASE WHEN i % 2 = 0 THEN 'M' ELSE 'F' END, now()
            FROM generate_series(0, {patients - 1}) AS i""")
        cursor.execute("SELECT min(id) FROM studies_patient WHERE clinic_id = %s", [clinic.pk])
        first_patient = cursor.fetchone()[0]
        cursor.execute(f"""
            INSERT INTO studies_study (uuid, clinic_id, patient_id, patient_name, study_instance_uid, study_id, study_date,
                study_time, accession_number, study_description, referring_physician_name, modalities_in_study,
                body_part_examined, number_of_series, number_of_instances, size_bytes, created_at, updated_at,
                deleted_at)
            SELECT gen_random_uuid(), {clinic.pk}, p.id, p.patient_name,
                   '1.2.826.0.1.3680043.10.{seed}.' || i, '', date '2010-01-01' + ({h.format(k=16807, seed=seed)}
                   % 5475)::int, make_time(({h.format(k=31, seed=seed)} % 24)::int, (i % 60)::int, 0),
                   'A{seed}' || lpad(i::text, 8, '0'), {pick(DESCRIPTIONS, 69621)}, '', {pick(MODALITIES, 1103)},
                   '', 1 + i % 7, 1 + i % 800, 1 + i * 1000, now() - i * interval '1 minute',
                   now(), CASE WHEN {h.format(k=65539, seed=seed)} % 100 = 0 THEN now() END
            FROM generate_series(0, {studies - 1}) AS i
            -- the study's copy of its patient's name, as the index writer sets it
            JOIN studies_patient p ON p.id = {first_patient} + ({h.format(k=48271, seed=seed)} % {patients})""")
        cursor.execute(f"""
            INSERT INTO studies_series (uuid, clinic_id, study_id, series_instance_uid, modality, series_number,
                series_description, body_part_examined, number_of_instances, thumbnail_key, created_at)
            SELECT gen_random_uuid(), {clinic.pk}, id, study_instance_uid || '.1', split_part(modalities_in_study,
                   '\\', 1), 1, '', '', number_of_instances, '', created_at
            FROM studies_study WHERE clinic_id = {clinic.pk}""")


def populate(*, clinic, studies: int, seed: int) -> None:
    """Bulk-create patients (about two studies each) and studies with realistic spreads of values."""
    from django.utils import timezone

    from studies.models import Patient, Series, Study

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
    patients = list(Patient.objects.for_clinic(clinic).only("id", "patient_name"))
    now = timezone.now()
    batch = []
    for index in range(studies):
        patient = rng.choice(patients)
        batch.append(Study(
            clinic=clinic,
            patient=patient,
            patient_name=patient.patient_name,
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
    series = (
        Series(clinic=clinic, study_id=study_id, series_instance_uid=f"{uid}.1", modality=modalities.split("\\")[0],
               series_number=1)
        for study_id, uid, modalities in Study.objects.for_clinic(clinic).values_list(
            "id", "study_instance_uid", "modalities_in_study").iterator()
    )
    Series.objects.bulk_create(series, batch_size=5000)


def searches(seed: int) -> dict[str, dict]:
    from studies.browse.selectors import StudySearch

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
        "name as listed 'Smith, Mary'": StudySearch(patient_name="Smith, Mary"),
        "name as listed 'Mary Smith'": StudySearch(patient_name="Mary Smith"),
    }


def qido_searches(seed: int, study_uid: str) -> dict[str, str]:
    """QIDO-RS study searches (query strings), as OHIF's study list and DICOMweb clients send them."""
    return {
        "QIDO all, limit 100": "limit=100",
        "QIDO PatientID": f"PatientID={seed}-0001234",
        "QIDO PatientName=SMI*": "PatientName=SMI*&limit=100",
        "QIDO PatientName=*SON^?ARY": "PatientName=*SON%5E?ARY&limit=100",
        "QIDO StudyDate 1 month": "StudyDate=20200301-20200331&limit=100",
        "QIDO ModalitiesInStudy=MR": "ModalitiesInStudy=MR&limit=100",
        "QIDO ModalitiesInStudy=C?": "ModalitiesInStudy=C?&limit=100",
        "QIDO AccessionNumber": f"AccessionNumber=A{seed}00012345",
        "QIDO StudyInstanceUID": f"StudyInstanceUID={study_uid}",
        "QIDO StudyDescription=*BRAIN*": "StudyDescription=*BRAIN*&limit=100",
        "QIDO series of one study": f"series:{study_uid}",
    }


def time_qido(*, clinic, query_string: str) -> float:
    """What QIDO-RS does for one request: parse, search within the time budget, answer DICOM JSON."""
    from django.http import QueryDict

    from studies import matching
    from studies.dicomweb import qido

    started = time.perf_counter()
    level, study_uid = qido.STUDY, None
    if query_string.startswith("series:"):
        level, study_uid, query_string = qido.SERIES, query_string.split(":", 1)[1], ""
    query = qido.query_parse(level=level, params=QueryDict(query_string))
    with matching.search_budget():
        results, _ = qido.search(clinic=clinic, query=query, study_uid=study_uid, base_url="https://pacs.example/")
    orjson.dumps(results)  # as the view answers
    return (time.perf_counter() - started) * 1000


def time_page(*, clinic, search) -> float:
    """What the studies page does: count the matches and fetch the first page with patients."""
    from studies import matching
    from studies.browse import selectors

    started = time.perf_counter()
    with matching.search_budget():
        queryset, matched = selectors.study_matches(clinic=clinic, search=search)
        selectors.study_count(queryset, cap=COUNT_CAP, matched=matched)
        rows = list(queryset[:PAGE_SIZE])
    for row in rows:
        _ = row.patient.patient_name
    return (time.perf_counter() - started) * 1000


def plans_print(request, *, full: bool) -> None:
    """Run one request, then EXPLAIN (ANALYZE, BUFFERS) each of its index reads: buffers, server time."""
    import json
    import re

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from studies import matching

    with CaptureQueriesContext(connection) as captured:
        request()
    statements = [re.sub(r"^DECLARE .*? CURSOR FOR ", "", q["sql"]) for q in captured]
    selects = [sql for sql in statements if sql.startswith("SELECT") and "studies_" in sql]
    line = []
    for sql in selects:
        with connection.cursor() as cursor:
            # As inside the search budget (studies.matching.search_budget).
            cursor.execute("SET max_parallel_workers_per_gather = 0")
            cursor.execute(f"SET cpu_operator_cost = {matching.SEARCH_OPERATOR_COST}")
            if full:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
                print("    " + "\n    ".join(row[0] for row in cursor.fetchall()))
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)
            plan = cursor.fetchone()[0]
            cursor.execute("RESET max_parallel_workers_per_gather")
            cursor.execute("RESET cpu_operator_cost")
        plan = (json.loads(plan) if isinstance(plan, str) else plan)[0]
        top = plan["Plan"]
        buffers = top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
        line.append(f"{buffers} buffers {plan['Execution Time']:.2f} ms")
    print(f"    {len(statements)} statements; index reads: " + "; ".join(line))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=30, help="timed runs of each search")
    parser.add_argument("--keep", action="store_true", help="keep the generated clinics")
    parser.add_argument("--plans", nargs="?", const="summary", choices=["summary", "full"],
                        help="after each search, EXPLAIN (ANALYZE, BUFFERS) its statements (PostgreSQL): "
                        "statements, buffers and server time, or the whole plans (full)")
    parser.add_argument("--reuse", metavar="SLUG", help="time the clinic a --keep run left (no new data)")
    args = parser.parse_args()
    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DB
    setup_django(database_url)
    from django.db import connection

    from studies.browse import selectors
    from studies.models import Patient, Study
    from tenants.models import Clinic

    if args.reuse:
        clinic = Clinic.objects.get(slug=args.reuse)
        neighbour = Clinic.objects.get(slug=f"{args.reuse}-b")
        args.studies = Study.objects.for_clinic(clinic).count()
        args.keep = True
        print(f"{connection.vendor}: reusing {clinic.slug} ({args.studies:,} studies)")
    else:
        tag = uuid.uuid4().hex[:8]
        clinic = Clinic.objects.create(name=f"Bench {tag}", slug=f"bench-{tag}", ae_title=f"B{tag}".upper()[:16])
        neighbour = Clinic.objects.create(
            name=f"Bench {tag} b", slug=f"bench-{tag}-b", ae_title=f"C{tag}".upper()[:16]
        )
    fill = populate_sql if connection.vendor == "postgresql" else populate
    try:
        if not args.reuse:
            started = time.perf_counter()
            fill(clinic=clinic, studies=args.studies, seed=1)
            fill(clinic=neighbour, studies=args.studies // 5, seed=2)
            selectors.index_statistics_refresh()
            kept = f"; time it again with --reuse {clinic.slug}" if args.keep else ""
            print(f"{connection.vendor}: generated {args.studies:,} studies (+{args.studies // 5:,} in another "
                  f"clinic) in {time.perf_counter() - started:.1f} s{kept}", flush=True)
        study_uid = Study.objects.for_clinic(clinic).order_by("id").values_list("study_instance_uid", flat=True)[min(777, args.studies - 1)]

        cases = [(label, "page", search) for label, search in searches(seed=1).items()]
        cases += [(label, "qido", text) for label, text in qido_searches(seed=1, study_uid=study_uid).items()]
        totals: dict[str, list[float]] = {"page": [], "qido": []}
        # Client CPU per request (this process only, not the database's) is steadier than wall time on a
        # busy machine; the load average says how busy it was.
        print(f"load average at start {os.getloadavg()[0]:.1f}")
        print(f"\n{'search':34} {'p50 ms':>8} {'p95 ms':>8} {'cpu ms':>8}")
        for label, door, search in cases:
            timer = time_page if door == "page" else time_qido
            key = "search" if door == "page" else "query_string"
            timer(clinic=clinic, **{key: search})  # warm the cache, as a busy server would be
            cpu_started = time.process_time()
            times = [timer(clinic=clinic, **{key: search}) for _ in range(args.rounds)]
            cpu = (time.process_time() - cpu_started) * 1000 / args.rounds
            totals[door].extend(times)
            print(f"{label:34} {statistics.median(times):>8.1f} {percentile(times, 0.95):>8.1f} {cpu:>8.1f}",
                  flush=True)
            if args.plans:
                plans_print(functools.partial(timer, clinic=clinic, **{key: search}), full=args.plans == "full")
        for door, times in totals.items():
            print(f"all {door} searches: p50 {statistics.median(times):.1f} ms, p95 {percentile(times, 0.95):.1f} ms "
                  f"({len(times)} requests, {args.studies:,} studies, {connection.vendor}, "
                  f"load average at end {os.getloadavg()[0]:.1f})")
    finally:
        if not args.keep:
            for target in (clinic, neighbour):
                Study.objects.for_clinic(target).delete()
                Patient.objects.for_clinic(target).delete()
                target.delete()


if __name__ == "__main__":
    main()

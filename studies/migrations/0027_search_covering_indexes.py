"""Covering indexes for name, modality and description searches (issue 19).

PostgreSQL: a covering prefix index of the study's patient name. A name pattern with a literal start and
more after it (``JOHN*^MI*``, ``SMITH^MARY*``) reads the range of names with that start; with the name in
the index entry (``INCLUDE``) PostgreSQL checks the rest of the pattern there and reads no table row for
the names that do not match (an index-only scan: 36 buffers, 1 ms for ``JOHN*^MI*`` at 100,000 studies,
where the trigram index took 16 ms and the plain prefix index 3,300 table rows).
``studies.matching.DicomLike`` spells such a pattern as this index's range and condition. The condition
``patient_name <> ''`` keeps every other search off it: any search can read a covering index whole, and
one for ``smi`` (a family or a given name) did, in name order, at 1,000,000 studies (293 ms); only a
pattern with a literal start says ``<> ''``.

SQLite: the date order of the live studies, as every search sorts (date, time, id, newest first), with the
name. Walked in date order with a name check (a common name, a leading wildcard), the clinic's index
(clinic, date) read a table row per study and sorted each day's rows again; this one is read alone, in
order (QIDO-RS ``*SON^?ARY``'s walk: 34 to 4 ms CPU; ``SMI*``: 15 to 1-2 ms). Not partial: SQLite reads
a partial index's table rows to check its condition; ``deleted_at`` (NULL for a live study) is a key.

SQLite also: the studies page counts up to 1,001 matches of a search; for a modality (10% of the studies) or a
description word (8%) that is 10,000-12,000 rows checked. Read from the table, each is a row of the study
table; from these indexes (clinic, live or not, the value) SQLite reads the entries alone (a covering
index: the study's id is the entry's rowid).
"""

from django.db import migrations

POSTGRESQL = {
    "study_name_prefix_cover": (
        "studies_study (clinic_id, UPPER(patient_name) text_pattern_ops) INCLUDE (patient_name, id) "
        "WHERE deleted_at IS NULL AND patient_name <> ''"
    ),
}
SQLITE = {
    "study_live_date_sqlite": (
        "studies_study (clinic_id, deleted_at, study_date DESC, study_time DESC, id DESC, patient_name)"
    ),
    "study_modalities_sqlite": "studies_study (clinic_id, deleted_at, modalities_in_study)",
    "study_description_sqlite": "studies_study (clinic_id, deleted_at, study_description)",
}


def _indexes(vendor: str) -> dict[str, str]:
    return {"postgresql": POSTGRESQL, "sqlite": SQLITE}.get(vendor, {})


def create(apps, schema_editor):
    indexes = _indexes(schema_editor.connection.vendor)
    for name, definition in indexes.items():
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {definition}")
    if indexes:
        # The planner weighs the new indexes by the table's statistics.
        schema_editor.execute("ANALYZE studies_study")


def drop(apps, schema_editor):
    for name in _indexes(schema_editor.connection.vendor):
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [
        ("studies", "0026_study_live_date_covers_name"),
    ]

    operations = [migrations.RunPython(create, drop, elidable=False)]

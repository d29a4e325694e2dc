"""Indexes for wildcard matching inside values, and fresh planner statistics (PostgreSQL only).

``studies.matching`` turns ``*`` and ``?`` into LIKE. A literal prefix (``SMI*``) uses the B-tree
pattern indexes of 0005_search_indexes; a wildcard before the literal (``*SON^?ARY``, ``*BRAIN*``,
an ideographic name group after ``=``) needs pg_trgm's trigram GIN indexes, over the same expressions
the queries compare (UPPER(...) where matching ignores case). pg_trgm ships with PostgreSQL and is a
trusted extension (13+), so the database owner may create it.

SQLite (the default run) has neither operator classes nor trigrams; its searches use its own indexes,
and this migration does nothing there.
"""

from django.db import migrations

INDEXES = {
    "patient_name_upper_trgm": "studies_patient USING gin (UPPER(patient_name) gin_trgm_ops)",
    "patient_id_trgm": "studies_patient USING gin (patient_id gin_trgm_ops)",
    "study_accession_trgm": "studies_study USING gin (accession_number gin_trgm_ops)",
    "study_description_upper_trgm": "studies_study USING gin (UPPER(study_description) gin_trgm_ops)",
    "study_referring_upper_trgm": "studies_study USING gin (UPPER(referring_physician_name) gin_trgm_ops)",
    # A study, series or instance named by its UID from a lower level (QIDO-RS studies/{uid}/series,
    # C-FIND and C-MOVE keys) is joined without its own clinic column; the (clinic, uid) unique indexes
    # cannot serve that, and the table was read whole (issue 19: 1.1 s for one study's series).
    "study_uid": "studies_study (study_instance_uid)",
    "series_uid": "studies_series (series_instance_uid)",
    "instance_uid": "studies_instance (sop_instance_uid)",
    # The page and C-FIND fetch the studies of the patients a name matched, newest first.
    "study_patient_live_date": (
        "studies_study (patient_id, study_date DESC NULLS LAST, study_time DESC NULLS LAST, id DESC) "
        "WHERE deleted_at IS NULL"
    ),
}
TABLES = ("studies_patient", "studies_study", "studies_series", "studies_instance")


def create_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    for name, definition in INDEXES.items():
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {definition}")
    # The planner chooses between these indexes from statistics: give it current ones now.
    for table in TABLES:
        schema_editor.execute(f"ANALYZE {table}")


def drop_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [
        ("studies", "0010_upload_anonymize"),
    ]

    operations = [migrations.RunPython(create_indexes, drop_indexes, elidable=False)]

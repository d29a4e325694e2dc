"""Prefix-search indexes for the studies page (PostgreSQL only).

Patient-name searches compare UPPER(patient_name) and the upper-cased given name with LIKE 'TERM%'; a B-tree index only serves LIKE
under the C collation unless it uses the pattern operator classes, so these indexes do. SQLite (the
default run) has no operator classes and needs none at its sizes, so nothing is created there.
"""

from django.db import migrations

INDEXES = {
    "patient_name_upper_pattern": "studies_patient (clinic_id, UPPER(patient_name) text_pattern_ops)",
    "patient_given_name_pattern": "studies_patient (clinic_id, UPPER(SPLIT_PART(patient_name, '^', 2)) text_pattern_ops)",
    "patient_id_pattern": "studies_patient (clinic_id, patient_id varchar_pattern_ops)",
    "study_accession_pattern": "studies_study (clinic_id, accession_number varchar_pattern_ops)",
    # Sorting by patient name walks this index and stops after one page.
    "patient_name_sort": "studies_patient (clinic_id, UPPER(REPLACE(patient_name, '^', ' ')))",
    "study_clinic_live_created": "studies_study (clinic_id, created_at DESC, id DESC) WHERE deleted_at IS NULL",
    "study_clinic_live_date": "studies_study (clinic_id, study_date DESC NULLS LAST, study_time DESC NULLS LAST, id DESC) WHERE deleted_at IS NULL",
}


def create_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, definition in INDEXES.items():
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {definition}")


def drop_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [
        ('studies', '0004_backup'),
    ]

    operations = [migrations.RunPython(create_indexes, drop_indexes, elidable=False)]

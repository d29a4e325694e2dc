"""Given-name prefix index for SQLite (the default run); PostgreSQL has its own since 0005_search_indexes.

The studies page matches a typed word against the start of the family or the given name. SQLite has no
SPLIT_PART, so ``studies.matching.given_name_upper`` spells the given name as the expression below,
literally, which lets SQLite use this index for its prefix range. Nothing is created on PostgreSQL.
"""

from django.db import migrations

INDEXES = {
    "patient_given_name_sqlite": "studies_patient (clinic_id, UPPER(SUBSTR(patient_name, INSTR(patient_name, '^') + 1)))",
}


def create_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    for name, definition in INDEXES.items():
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {definition}")


def drop_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    for name in INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [
        ("studies", "0011_search_trigram_indexes"),
    ]

    operations = [migrations.RunPython(create_indexes, drop_indexes, elidable=False)]

"""The patient's name on the study row, filled for existing studies, and its search indexes (issue 19).

A name that matches many patients ("SMI*" matched 6,700 of 50,000) made a study search read the patients,
then tens of thousands of study rows by patient before sorting them by date (15,000-24,000 buffers).
With the name on the study the search is one table: the planner walks the date index filtering by name,
or reads the name index, whichever its statistics say is cheaper. The indexes spell the expressions
``studies.matching`` and ``studies.browse.selectors`` compare (UPPER(...), the given name, the sort key),
for live studies only, as every search asks for.
"""

from django.db import migrations, models

POSTGRESQL = {
    "study_name_upper_pattern": (
        "studies_study (clinic_id, UPPER(patient_name) text_pattern_ops) WHERE deleted_at IS NULL"
    ),
    "study_given_name_pattern": (
        "studies_study (clinic_id, UPPER(SPLIT_PART(patient_name, '^', 2)) text_pattern_ops) WHERE deleted_at IS NULL"
    ),
    "study_name_upper_trgm": "studies_study USING gin (UPPER(patient_name) gin_trgm_ops) WHERE deleted_at IS NULL",
    "study_name_sort": (
        "studies_study (clinic_id, UPPER(REPLACE(patient_name, '^', ' ')), id) WHERE deleted_at IS NULL"
    ),
}
# PostgreSQL keeps no statistics for the expression of a partial index, and without them guessed that
# any name pattern matches 0.5% of the studies ('SMI*' matched 3.3%, 'SMITH^MARY*' none); extended
# statistics on the expressions give it their real spread (PostgreSQL 14+).
POSTGRESQL_STATISTICS = {
    "study_name_upper_stats": "(UPPER(patient_name)) FROM studies_study",
    "study_given_name_stats": "(UPPER(SPLIT_PART(patient_name, '^', 2))) FROM studies_study",
}
# SQLite compares a prefix as a range of UPPER(...) (studies.matching._prefix_range_q), which these serve.
# Not partial: the page's word search ORs the family and the given name, and SQLite checks a partial
# index's condition against each OR branch alone, where deleted_at IS NULL is not (it read every study).
SQLITE = {
    "study_name_upper_sqlite": "studies_study (clinic_id, UPPER(patient_name))",
    "study_given_name_sqlite": "studies_study (clinic_id, UPPER(SUBSTR(patient_name, INSTR(patient_name, '^') + 1)))",
    "study_name_sort_sqlite": "studies_study (clinic_id, UPPER(REPLACE(patient_name, '^', ' '))) WHERE deleted_at IS NULL",
}


def _indexes(vendor: str) -> dict[str, str]:
    return {"postgresql": POSTGRESQL, "sqlite": SQLITE}.get(vendor, {})


def backfill(apps, schema_editor):
    # One statement for every clinic's studies: a migration is cross-clinic maintenance.
    schema_editor.execute(
        "UPDATE studies_study SET patient_name = "
        "(SELECT p.patient_name FROM studies_patient p WHERE p.id = studies_study.patient_id)"
    )


def create_indexes(apps, schema_editor):
    for name, definition in _indexes(schema_editor.connection.vendor).items():
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {definition}")
    if schema_editor.connection.vendor == "postgresql":
        for name, definition in POSTGRESQL_STATISTICS.items():
            schema_editor.execute(f"CREATE STATISTICS IF NOT EXISTS {name} ON {definition}")
    if schema_editor.connection.vendor in ("postgresql", "sqlite"):
        # The planner weighs these indexes against the date index by the column's statistics.
        schema_editor.execute("ANALYZE studies_study")


def drop_indexes(apps, schema_editor):
    for name in _indexes(schema_editor.connection.vendor):
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")
    if schema_editor.connection.vendor == "postgresql":
        for name in POSTGRESQL_STATISTICS:
            schema_editor.execute(f"DROP STATISTICS IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [
        ("studies", "0022_merge_20261201_1450"),
    ]

    operations = [
        migrations.AddField(
            model_name="study",
            name="patient_name",
            field=models.CharField(blank=True, max_length=324),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop, elidable=False),
        migrations.RunPython(create_indexes, drop_indexes, elidable=False),
    ]

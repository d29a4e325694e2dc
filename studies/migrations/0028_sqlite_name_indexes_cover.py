"""SQLite: the name indexes carry the name and the live flag (issue 19).

A name search first takes up to 1,001 matching ids (``studies.matching.rows_match``) to decide how to
find the page. For a common start (``SMI*``: 3,300 of 100,000 studies) that read 1,001 entries of the
name index and, for each, the study row to check the pattern and that the study is live: 2.5 ms of
a 14 ms QIDO-RS request. With the name and ``deleted_at`` in the index entry SQLite checks both there
(a covering index; the id is the entry's rowid): 0.4 ms. The given-name index (``mary``) likewise.
Same names, same leading keys, so every search that used them still does.
"""

from django.db import migrations

COVERING = {
    "study_name_upper_sqlite": "studies_study (clinic_id, UPPER(patient_name), deleted_at, patient_name)",
    "study_given_name_sqlite": (
        "studies_study (clinic_id, UPPER(SUBSTR(patient_name, INSTR(patient_name, '^') + 1)), deleted_at, patient_name)"
    ),
}
PLAIN = {  # as migration 0023 made them
    "study_name_upper_sqlite": "studies_study (clinic_id, UPPER(patient_name))",
    "study_given_name_sqlite": "studies_study (clinic_id, UPPER(SUBSTR(patient_name, INSTR(patient_name, '^') + 1)))",
}


def _replace(schema_editor, indexes: dict[str, str]) -> None:
    if schema_editor.connection.vendor != "sqlite":
        return
    for name, definition in indexes.items():
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")
        schema_editor.execute(f"CREATE INDEX {name} ON {definition}")
    schema_editor.execute("ANALYZE studies_study")


def cover(apps, schema_editor):
    _replace(schema_editor, COVERING)


def uncover(apps, schema_editor):
    _replace(schema_editor, PLAIN)


class Migration(migrations.Migration):
    dependencies = [
        ("studies", "0027_search_covering_indexes"),
    ]

    operations = [migrations.RunPython(cover, uncover, elidable=False)]

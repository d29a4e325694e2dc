"""A trigram full-text index of the study's patient name for SQLite (the default run); nothing on PostgreSQL.

SQLite has no trigram index: a name pattern with a leading wildcard (``*SON^?ARY``, ``*ANNA*``) read every
study of the clinic and ran LIKE on each (70-120 ms at 100,000 studies, and growing with the archive).
FTS5's trigram tokenizer finds the rows holding each literal run of three or more characters from its
index; ``studies.matching.DicomLike`` asks it for candidates, and LIKE still decides on each candidate.

The index keeps its own copy of the name, kept current by triggers on every write of the study table
(whatever writes it: the index writer, bulk loads, deletes). Django rebuilds a SQLite table for some
later schema changes and does not recreate its triggers: such a migration of ``studies_study`` must run
this migration's ``create`` again (``tests/studies/test_study_patient_name.py`` checks the triggers).
"""

from django.db import migrations

STATEMENTS = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS study_name_fts USING fts5(patient_name, tokenize='trigram')",
    "CREATE TRIGGER IF NOT EXISTS study_name_fts_insert AFTER INSERT ON studies_study BEGIN "
    "INSERT INTO study_name_fts (rowid, patient_name) VALUES (new.id, new.patient_name); END",
    "CREATE TRIGGER IF NOT EXISTS study_name_fts_update AFTER UPDATE OF patient_name ON studies_study BEGIN "
    "UPDATE study_name_fts SET patient_name = new.patient_name WHERE rowid = old.id; END",
    "CREATE TRIGGER IF NOT EXISTS study_name_fts_delete AFTER DELETE ON studies_study BEGIN "
    "DELETE FROM study_name_fts WHERE rowid = old.id; END",
    "DELETE FROM study_name_fts",
    "INSERT INTO study_name_fts (rowid, patient_name) SELECT id, patient_name FROM studies_study",
]


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    for statement in STATEMENTS:
        schema_editor.execute(statement)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "sqlite":
        return
    for trigger in ("insert", "update", "delete"):
        schema_editor.execute(f"DROP TRIGGER IF EXISTS study_name_fts_{trigger}")
    schema_editor.execute("DROP TABLE IF EXISTS study_name_fts")


class Migration(migrations.Migration):
    dependencies = [
        ("studies", "0023_study_patient_name"),
    ]

    operations = [migrations.RunPython(create, drop, elidable=False)]

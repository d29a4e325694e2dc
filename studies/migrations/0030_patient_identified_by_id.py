"""Patient.identified_by_id: the unique Patient ID constraint covers only patients filed by a real ID.

Existing rows: an empty Patient ID was never filed by ID (False), any other was (True). Rows filed under a
placeholder ID ("UNKNOWN") before this migration keep True and stay as they are: the index cannot tell
which of their studies belong to which person. New files with a placeholder make rows of their own.
"""

from django.db import migrations, models


def _mark_patients_without_id(apps, schema_editor):
    Patient = apps.get_model("studies", "Patient")
    # Every clinic's rows: a schema migration, not a tenant's request.
    Patient.objects.filter(patient_id="").update(identified_by_id=False)


class Migration(migrations.Migration):

    dependencies = [
        ("studies", "0029_patient_without_id"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="patient",
            name="patient_unique_id",
        ),
        migrations.AddField(
            model_name="patient",
            name="identified_by_id",
            field=models.BooleanField(default=True),
        ),
        migrations.RunPython(_mark_patients_without_id, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="patient",
            constraint=models.UniqueConstraint(
                condition=models.Q(("identified_by_id", True)),
                fields=("clinic", "patient_id", "issuer_of_patient_id"),
                name="patient_unique_id",
            ),
        ),
    ]

"""One name, one token per clinic: the audit trail names tokens by name.

Tokens that already share a name (case aside) keep the oldest's name; each later one gets its prefix
appended, the part of its secret the token pages show, so each can still be found.
"""

import django.db.models.functions.text
from django.db import migrations, models


def rename_duplicates(apps, schema_editor):
    ApiToken = apps.get_model("tenants", "ApiToken")
    seen = set()
    for token in ApiToken.objects.order_by("clinic_id", "created_at", "pk"):
        key = (token.clinic_id, token.name.lower())
        if key in seen:
            token.name = f"{token.name[:86]} ({token.prefix})"
            token.save(update_fields=["name"])
        seen.add((token.clinic_id, token.name.lower()))


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0004_user_password_reset_requested_at"),
    ]

    operations = [
        migrations.RunPython(rename_duplicates, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="apitoken",
            constraint=models.UniqueConstraint(
                django.db.models.functions.text.Lower("name"), models.F("clinic"), name="api_token_unique_name"
            ),
        ),
    ]

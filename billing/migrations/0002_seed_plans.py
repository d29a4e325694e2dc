"""Seed the three plans of DESIGN.md; operators edit them (and their Stripe prices) in the admin."""

from django.db import migrations

GB = 1000**3
PLANS = [
    ("starter", "Starter", 100 * GB, 7999, 1),
    ("professional", "Professional", 500 * GB, 9999, 2),
    ("enterprise", "Enterprise", 2000 * GB, 49999, 3),
]


def seed(apps, schema_editor):
    Plan = apps.get_model("billing", "Plan")
    for code, name, storage, price, order in PLANS:
        Plan.objects.get_or_create(
            code=code, defaults={"name": name, "storage_bytes": storage, "price_cents": price, "sort_order": order}
        )


def unseed(apps, schema_editor):
    apps.get_model("billing", "Plan").objects.filter(code__in=[p[0] for p in PLANS]).delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]

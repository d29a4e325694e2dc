"""Seed the three plans of DESIGN.md; operators edit them (and their Stripe prices) in the admin."""

from django.db import migrations

from billing.plans import DEFAULT_PLANS, plans_seed


def seed(apps, schema_editor):
    plans_seed(apps.get_model("billing", "Plan"))


def unseed(apps, schema_editor):
    apps.get_model("billing", "Plan").objects.filter(code__in=[p[0] for p in DEFAULT_PLANS]).delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]

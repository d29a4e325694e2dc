"""manage.py seed_demo: the demo clinic, its owner and a sample study for `make run` (idempotent).

It lives in ``studies`` (not ``tenants``) because it stores the sample study through the ingest service,
and tenants sits below studies.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from studies import sample_study
from studies.models import Study
from tenants import services
from tenants.models import Clinic, User

DEMO_EMAIL = "owner@demo.example"


class Command(BaseCommand):
    help = "Create the demo clinic, its owner and a sample CT study on first run, and print how to sign in."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8000, help="The web server's port, for the printed address.")
        parser.add_argument("--no-sample", action="store_true", help="Do not store the synthetic sample study.")

    def handle(self, *args: Any, **options: Any) -> None:
        password_file = settings.VAR_DIR / "demo_password"
        clinic = Clinic.objects.filter(slug="demo").first()
        if clinic is None:
            # Random per installation, so that no two installations share a known password.
            password = "Demo-" + secrets.token_urlsafe(9) + "-7!"
            owner = User.objects.filter(email=DEMO_EMAIL).first() or User.objects.create_user(
                DEMO_EMAIL, password, full_name="Demo Owner"
            )
            owner.set_password(password)
            owner.save()
            clinic = services.clinic_create(name="Demo Clinic", slug="demo", owner=owner)
            password_file.write_text(password)
            password_file.chmod(0o600)
        # Once only: a sample the owner moved to the trash (or that is still there) is not brought back.
        sample_seen = (
            Study.objects.for_clinic(clinic).filter(study_instance_uid=sample_study.STUDY_INSTANCE_UID).exists()
        )
        if not options["no_sample"] and not sample_seen:
            stored = sample_study.sample_study_store(clinic=clinic)
            self.stdout.write(f"  Stored the sample study ({len(stored)} CT images) in Demo Clinic.")
        password = password_file.read_text().strip() if password_file.exists() else "(set when first created)"
        self.stdout.write(
            self.style.SUCCESS(
                f"\n  Portal: http://127.0.0.1:{options['port']}/\n  Sign in as {DEMO_EMAIL} with password {password}\n"
                "  E-mails the portal sends (invitations, shares, password resets) are printed in this terminal.\n"
            )
        )

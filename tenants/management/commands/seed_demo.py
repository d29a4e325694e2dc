"""manage.py seed_demo: the demo clinic and owner for `make run` (idempotent)."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from tenants import services
from tenants.models import Clinic, User

DEMO_EMAIL = "owner@demo.example"


class Command(BaseCommand):
    help = "Create the demo clinic and its owner on first run, and print how to sign in."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8000, help="The web server's port, for the printed address.")

    def handle(self, *args: Any, **options: Any) -> None:
        password_file = settings.VAR_DIR / "demo_password"
        if not Clinic.objects.filter(slug="demo").exists():
            # Random per installation, so that no two installations share a known password.
            password = "Demo-" + secrets.token_urlsafe(9) + "-7!"
            owner = User.objects.filter(email=DEMO_EMAIL).first() or User.objects.create_user(
                DEMO_EMAIL, password, full_name="Demo Owner"
            )
            owner.set_password(password)
            owner.save()
            services.clinic_create(name="Demo Clinic", slug="demo", owner=owner)
            password_file.write_text(password)
            password_file.chmod(0o600)
        password = password_file.read_text().strip() if password_file.exists() else "(set when first created)"
        self.stdout.write(self.style.SUCCESS(
            f"\n  Portal: http://127.0.0.1:{options['port']}/\n  Sign in as {DEMO_EMAIL} with password {password}\n"
        ))

"""manage.py create_clinic --name N --slug S --owner EMAIL --password P [--ae-title AE]"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from portal.exceptions import PortalError
from tenants import services
from tenants.models import User


class Command(BaseCommand):
    help = "Create a clinic and its owner account (or make an existing user its owner)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument("--slug", required=True)
        parser.add_argument("--owner", required=True, help="The owner's e-mail address.")
        parser.add_argument("--password", help="The owner's password, when the account is new.")
        parser.add_argument("--ae-title", default="", help="Called AE title (default: the slug upper-cased).")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        email = options["owner"].strip().lower()
        owner = User.objects.filter(email=email).first()
        if owner is None:
            if not options["password"]:
                raise CommandError("--password is required for a new owner account.")
            candidate = User(email=email)
            try:
                validate_password(options["password"], user=candidate)
            except ValidationError as exc:
                raise CommandError("The password is too weak: " + " ".join(exc.messages)) from exc
            owner = User.objects.create_user(email, options["password"])
        try:
            clinic = services.clinic_create(
                name=options["name"], slug=options["slug"], owner=owner, ae_title=options["ae_title"]
            )
        except PortalError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"Created clinic {clinic.slug} (AE title {clinic.ae_title}) owned by {owner.email}")

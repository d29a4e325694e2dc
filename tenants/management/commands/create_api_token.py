"""manage.py create_api_token --clinic S --role R [--name N]: prints the token once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from portal.exceptions import PortalError
from tenants import services
from tenants.models import Clinic


class Command(BaseCommand):
    help = "Create an API token for a clinic and print it (it is not shown again)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--clinic", required=True, help="The clinic's slug.")
        parser.add_argument("--role", required=True)
        parser.add_argument("--name", help='Unique in the clinic; default "command line <date and time>".')

    def handle(self, *args: Any, **options: Any) -> None:
        clinic = Clinic.objects.filter(slug=options["clinic"]).first()
        if clinic is None:
            raise CommandError(f"No clinic with slug '{options['clinic']}'.")
        try:
            # Token names are unique in a clinic (the audit trail names tokens by name).
            name = options["name"] or f"command line {timezone.now():%Y-%m-%d %H:%M:%S}"
            created = services.api_token_create(clinic=clinic, name=name, role=options["role"])
        except PortalError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(created.secret)

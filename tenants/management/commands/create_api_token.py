"""manage.py create_api_token --clinic S --role R [--name N]: prints the token once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.exceptions import PortalError
from tenants import services
from tenants.models import Clinic


class Command(BaseCommand):
    help = "Create an API token for a clinic and print it (it is not shown again)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--clinic", required=True, help="The clinic's slug.")
        parser.add_argument("--role", required=True)
        parser.add_argument("--name", default="command line")

    def handle(self, *args: Any, **options: Any) -> None:
        clinic = Clinic.objects.filter(slug=options["clinic"]).first()
        if clinic is None:
            raise CommandError(f"No clinic with slug '{options['clinic']}'.")
        try:
            created = services.api_token_create(clinic=clinic, name=options["name"], role=options["role"])
        except PortalError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(created.secret)

"""manage.py verify_audit_log [--clinic SLUG]: check the audit hash chains, exit 1 on any break."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.audit import audit_chains_verify
from tenants.models import Clinic


class Command(BaseCommand):
    help = (
        "Check every audit chain (each clinic's and the global one) and print each break: an entry edited, "
        "deleted or cut off the end. Exits with status 1 when anything is broken."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--clinic", metavar="SLUG", help="Check only this clinic's chain.")

    def handle(self, *args: Any, **options: Any) -> None:
        clinic = None
        if options["clinic"]:
            clinic = Clinic.objects.filter(slug=options["clinic"]).first()
            if clinic is None:
                raise CommandError(f"No clinic with the slug '{options['clinic']}'.")
        report = audit_chains_verify(clinic=clinic)
        for problem in report.problems:
            self.stdout.write(self.style.ERROR(
                f"BROKEN chain {problem.label}: entry {problem.sequence} {problem.problem}"
            ))
        summary = f"{report.chains} chain(s), {report.entries} entries checked"
        if report.problems:
            # CommandError exits with status 1 and prints to stderr, which is what cron and CI watch.
            raise CommandError(f"{summary}: {len(report.problems)} break(s) found.")
        self.stdout.write(self.style.SUCCESS(f"{summary}: no breaks."))

"""manage.py restore --clinic S | --all [--jobs N]: rewrite primary objects from the replica."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.backup import recovery
from tenants.models import Clinic


class Command(BaseCommand):
    help = (
        "Rewrite missing or corrupt primary objects from the replica (after checking the replica copy "
        "decrypts to the indexed content). Resumable: objects that verify on primary are skipped."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--clinic", help="The clinic's slug.")
        target.add_argument("--all", action="store_true", help="Every clinic.")
        parser.add_argument("--jobs", type=int, default=4, help="Objects checked in parallel (default 4).")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["all"]:
            # Unscoped: restoring every clinic is an operator's cross-clinic job.
            clinics = list(Clinic.objects.order_by("pk"))
        else:
            clinics = list(Clinic.objects.filter(slug=options["clinic"]))
            if not clinics:
                raise CommandError(f"No clinic with slug '{options['clinic']}'.")
        unrecoverable: list[str] = []
        for clinic in clinics:
            report = recovery.clinic_restore(clinic=clinic, jobs=options["jobs"], progress=self.stdout.write)
            self.stdout.write(
                f"{clinic.slug}: {report.checked} checked, {report.good} already good, {report.restored} restored, "
                f"{len(report.unrecoverable)} unrecoverable, {report.other_objects_copied} other objects copied"
            )
            unrecoverable += report.unrecoverable
        for key in unrecoverable:
            self.stderr.write(f"UNRECOVERABLE {key}: neither copy decrypts to the indexed content")
        if unrecoverable:
            raise CommandError(f"{len(unrecoverable)} objects could not be restored.")

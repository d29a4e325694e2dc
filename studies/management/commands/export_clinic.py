"""manage.py export_clinic --clinic S --to DIR: plain DICOM files and a DICOMDIR, for an offline copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.backup import export
from tenants.models import Clinic


class Command(BaseCommand):
    help = (
        "Write every study of a clinic as plain (decrypted) DICOM files in a patient/study/series folder "
        "tree with a DICOMDIR, readable by any DICOM viewer. The folder must be empty or absent. The output "
        "holds patient data in the clear: keep it on encrypted, access-controlled media."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--clinic", required=True, help="The clinic's slug.")
        parser.add_argument("--to", required=True, help="Target folder (created; must be empty).")
        parser.add_argument("--include-trash", action="store_true", help="Also studies in the trash.")

    def handle(self, *args: Any, **options: Any) -> None:
        clinic = Clinic.objects.filter(slug=options["clinic"]).first()
        if clinic is None:
            raise CommandError(f"No clinic with slug '{options['clinic']}'.")
        target = Path(options["to"])
        if target.exists() and any(target.iterdir()):
            raise CommandError(f"{target} is not empty.")
        report = export.clinic_export(
            clinic=clinic, target=target, include_trash=options["include_trash"], progress=self.stdout.write
        )
        self.stdout.write(
            f"Exported {report.instances} instances of {report.studies} studies ({report.bytes} bytes) to {target}"
        )

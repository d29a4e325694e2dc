"""manage.py restore_drill [--clinic S] [--studies N]: a restore test into a scratch folder, now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.backup import drill
from tenants.models import Clinic


class Command(BaseCommand):
    help = (
        "Restore a random sample of each clinic's studies from the replica and the latest database backup "
        "into a scratch folder, check them, record the result (shown on the backup page), delete the folder."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--clinic", metavar="SLUG", help="Only this clinic.")
        parser.add_argument("--studies", type=int, default=None, help="Studies per clinic (default setting).")

    def handle(self, *args: Any, **options: Any) -> None:
        clinic = None
        if options["clinic"]:
            clinic = Clinic.objects.filter(slug=options["clinic"]).first()
            if clinic is None:
                raise CommandError(f"No clinic with the slug '{options['clinic']}'.")
        runs = drill.restore_drill_run(clinic=clinic, sample=options["studies"], source="command")
        for run in runs:
            verdict = "passed" if run.passed else "FAILED"
            self.stdout.write(f"{run.clinic.slug}: {verdict}, {run.studies_checked} studies, "
                              f"{run.instances_checked} instances, database: {run.database_snapshot or 'none'}")
            for problem in run.problems:
                self.stderr.write(f"  {problem}")
        failed = [run for run in runs if not run.passed]
        if failed:
            raise CommandError(f"The restore test failed for {len(failed)} clinic(s).")

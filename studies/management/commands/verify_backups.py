"""manage.py verify_backups [--clinic S] [--limit N] [--all]: read replica copies back and check them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.backup import verification
from tenants.models import Clinic


class Command(BaseCommand):
    help = (
        "Decrypt replica copies and compare their SHA-256 with the index, newest first: those not verified "
        "within BACKUP_VERIFY_INTERVAL_DAYS (or every copy with --all). Exits non-zero if any copy fails."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--clinic", help="Only this clinic (slug); default every clinic.")
        parser.add_argument("--limit", type=int, help="Verify at most this many copies.")
        parser.add_argument("--all", action="store_true", help="Verify every copy, even recently verified ones.")

    def handle(self, *args: Any, **options: Any) -> None:
        clinic = None
        if options["clinic"]:
            clinic = Clinic.objects.filter(slug=options["clinic"]).first()
            if clinic is None:
                raise CommandError(f"No clinic with slug '{options['clinic']}'.")
        interval = timedelta(0) if options["all"] else timedelta(days=settings.BACKUP_VERIFY_INTERVAL_DAYS)

        def progress(position: int, total: int, instance: Any, result: verification.ObjectCheck) -> None:
            if not result.ok:
                self.stderr.write(f"FAILED {instance.object_key}: {result.problem} {result.detail}")
            if position % 100 == 0 or position == total:
                self.stdout.write(f"{position}/{total} verified")

        run = verification.verification_run(
            clinic=clinic, limit=options["limit"], interval=interval, source="command", progress=progress
        )
        self.stdout.write(f"Checked {run.checked} replica copies, {run.failed} failed.")
        if run.failed:
            raise CommandError(f"{run.failed} replica copies failed verification (see above).")

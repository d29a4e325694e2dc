"""manage.py replica_protect [--days N] [--mode GOVERNANCE|COMPLIANCE] [--status]: protect the replica bucket."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.backup import replication


class Command(BaseCommand):
    help = (
        "Turn on versioning and default Object Lock retention on the S3 replica bucket (run once, with the "
        "replica's admin credentials). The bucket must have been created with Object Lock enabled."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, help="Retention in days (default REPLICA_OBJECT_LOCK_DAYS).")
        parser.add_argument("--mode", choices=["GOVERNANCE", "COMPLIANCE"])
        parser.add_argument("--status", action="store_true", help="Only show the current protection.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["status"]:
            status = replication.replica_protection_status()
        else:
            try:
                status = replication.replica_protection_apply(retention_days=options["days"], mode=options["mode"])
            except Exception as exc:  # noqa: BLE001 - shown to the operator as-is
                raise CommandError(f"Could not protect the replica bucket: {exc}") from exc
        self.stdout.write(json.dumps(status, indent=2))

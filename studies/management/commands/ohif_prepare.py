"""manage.py ohif_prepare: write OHIF's files as the portal serves them (run by `make ohif`)."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.viewer import ohif


class Command(BaseCommand):
    help = (
        "Write the installed OHIF dist/ into OHIF_PREPARED_DIR rewritten for the portal's prefixes and "
        "gzipped ahead, for nginx and the portal to serve without per-request work."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--force", action="store_true", help="Write it again even if it is current.")

    def handle(self, *args: Any, **options: Any) -> None:
        if ohif.prepared_current() and not options["force"]:
            self.stdout.write(f"OHIF's prepared files are current ({ohif.prepared_dir()}).")
            return
        started = time.monotonic()
        try:
            count = ohif.prepare()
        except ohif.ViewerNotInstalled as exc:
            raise CommandError(f"OHIF is not installed ({exc}): run `make ohif`.") from exc
        self.stdout.write(f"Prepared {count} OHIF files in {ohif.prepared_dir()} ({time.monotonic() - started:.0f} s).")

"""manage.py rebuild_index [--clinic-uuid U ...]: rebuild the database index from the replica alone."""

from __future__ import annotations

import os
import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.backup import recovery
from studies.browse import selectors


class Command(BaseCommand):
    help = (
        "Rebuild clinics (from their clinic.json manifest), clinic keys and the patient/study/series/instance "
        "index from the replica with MASTER_KEYS, for when the database is lost: from the index sidecars "
        "written with each replicated batch, decrypting and parsing only the objects no sidecar describes. "
        "Resumable: objects already indexed are skipped. Users and memberships are not in the replica: add an owner "
        "afterwards (manage.py createsuperuser, then invite). Run `manage.py restore --all` next if primary "
        "storage was lost too."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--clinic-uuid", action="append", help="Only this clinic (repeatable).")
        parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                            help="Worker processes decrypting and parsing objects (default: one per CPU).")
        parser.add_argument("--no-sidecars", action="store_true",
                            help="Ignore the index sidecars: decrypt and parse every object (slow).")
        parser.add_argument("--verify", action="store_true",
                            help="Also decrypt each object a sidecar describes and check its sha256 and size "
                            "(no parsing). Without it those instances are left for verify_backups.")

    def handle(self, *args: Any, **options: Any) -> None:
        uuids = None
        if options["clinic_uuid"]:
            try:
                uuids = [uuid.UUID(value) for value in options["clinic_uuid"]]
            except ValueError as exc:
                raise CommandError(f"Not a clinic uuid: {exc}") from exc
        report = recovery.index_rebuild(
            clinic_uuids=uuids, progress=self.stdout.write, jobs=max(1, options["jobs"]),
            use_sidecars=not options["no_sidecars"], verify=options["verify"],
        )
        # A rebuild is a bulk load: searches must not wait for autovacuum to learn the new table sizes.
        selectors.index_statistics_refresh()
        self.stdout.write(
            f"Done: {report.clinics_created} clinics recreated, {report.keys_restored} clinic keys restored, "
            f"{report.objects_seen} objects seen, {report.indexed} indexed, {report.already_indexed} already "
            f"indexed, {report.skipped_not_dicom} not DICOM (thumbnails), {len(report.failed)} failed."
        )
        self.stdout.write(
            f"Of those indexed: {report.from_sidecars} from {report.sidecars_read} index sidecars"
            f"{'' if options['verify'] else ' (left for verify_backups to check)'}, {report.decoded} decoded; "
            f"{report.sidecars_unreadable} sidecars unreadable, {report.sidecar_mismatches} sidecar entries "
            "not matching their object (decoded instead)."
        )
        for key in report.failed:
            self.stderr.write(f"FAILED {key}: does not decrypt")
        if report.failed:
            raise CommandError(f"{len(report.failed)} replica objects could not be decrypted.")

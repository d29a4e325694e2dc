"""manage.py restore_database [--at ISO-TIME]: bring the database back from the backup store."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from studies.archive.errors import ArchiveError
from studies.backup import database, pgbackrest


def _moment(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--at must be an ISO time such as 2026-12-01T10:15:00Z, not {value!r}.") from None
    return moment if timezone.is_aware(moment) else timezone.make_aware(moment, timezone.get_current_timezone())


class Command(BaseCommand):
    help = (
        "SQLite: replace the database with the newest encrypted snapshot at or before --at (the newest without "
        "it); stop the portal's processes first. PostgreSQL: print pgBackRest's point-in-time restore steps, "
        "or run the restore with --run (PostgreSQL stopped). Then checks the audit log against the anchors."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--at", metavar="ISO-TIME", help="Restore the state as of this time.")
        parser.add_argument("--list", action="store_true", help="SQLite: list the snapshots and stop.")
        parser.add_argument("--run", action="store_true", help="PostgreSQL: run the restore, not only print it.")
        parser.add_argument("--check-audit", action="store_true",
                            help="Only check the database's audit log against the anchors in the backup store.")

    def handle(self, *args: Any, **options: Any) -> None:
        at = _moment(options["at"]) if options["at"] else None
        if options["check_audit"]:
            self._check_anchors()
            return
        try:
            if database.database_engine() == "postgresql":
                if not options["run"]:
                    self.stdout.write("\n".join(pgbackrest.restore_steps(at=at)))
                    return
                pgbackrest.restore(at=at)
                self.stdout.write(self.style.SUCCESS(
                    "pgBackRest restored the data directory. Start PostgreSQL, then run "
                    "`manage.py restore_database --check-audit`."
                ))
                return
            if options["list"]:
                for snapshot in database.database_snapshot_list():
                    self.stdout.write(f"{snapshot.created_at.isoformat()}  {snapshot.snapshot_id}  "
                                      f"{snapshot.size_bytes} bytes")
                return
            snapshot = database.database_snapshot_restore(at=at)
        except ArchiveError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(self.style.SUCCESS(
            f"Database restored from snapshot {snapshot.snapshot_id} taken {snapshot.created_at.isoformat()}."
        ))
        self._check_anchors()

    def _check_anchors(self) -> None:
        problems = database.audit_anchors_check()
        for problem in problems:
            self.stdout.write(f"audit chain {problem.chain}: entry {problem.sequence} {problem.problem}")
        changed = [p for p in problems if p.kind == "changed"]
        if changed:
            raise CommandError(f"{len(changed)} audit chain(s) differ from the anchors in the backup store.")
        if not problems:
            self.stdout.write("Audit log matches the newest anchor in the backup store.")

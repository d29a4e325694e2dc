"""manage.py backup_database: back the database up to the backup (replica) store now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.archive.errors import ArchiveError
from studies.backup import database, pgbackrest


class Command(BaseCommand):
    help = (
        "SQLite: write an encrypted, consistent snapshot of the database to the replica store. PostgreSQL: "
        "take a pgBackRest base backup (WAL is archived continuously by archive_command). Both anchor the "
        "audit chain heads in the replica store."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--type", choices=["full", "diff", "incr"], default="incr",
                            help="PostgreSQL: the kind of base backup (default incr; the first is always full).")
        parser.add_argument("--setup", action="store_true",
                            help="PostgreSQL: write pgbackrest.conf, create the stanza and print the "
                                 "postgresql.conf lines for WAL archiving.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            engine = database.database_engine()
            if engine == "postgresql" and options["setup"]:
                path = pgbackrest.config_write()
                pgbackrest.stanza_create()
                self.stdout.write(f"Wrote {path} and created stanza. Put in postgresql.conf, then reload:")
                self.stdout.write("archive_mode = on\nwal_level = replica")
                self.stdout.write(f"archive_command = '{pgbackrest.archive_command()}'")
                return
            if engine == "sqlite":
                database.audit_anchor_write(force=True)
                snapshot = database.database_snapshot_create(force=True)
                assert snapshot is not None
                self.stdout.write(self.style.SUCCESS(
                    f"Snapshot {snapshot.snapshot_id} ({snapshot.size_bytes} bytes, encrypted) written to the "
                    "replica store."
                ))
            else:
                pgbackrest.base_backup(kind=options["type"])
                database.audit_anchor_write(force=True)
                self.stdout.write(self.style.SUCCESS(f"pgBackRest {options['type']} backup done."))
        except ArchiveError as exc:
            raise CommandError(exc.message) from None

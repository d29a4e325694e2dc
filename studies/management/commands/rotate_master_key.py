"""Re-wrap every clinic key under the current master key (the first in MASTER_KEYS).

Objects are not re-encrypted: only the small wrapped clinic keys change. Run it after putting a new
key first in MASTER_KEYS; once it reports that an old master key wraps nothing, remove that key.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from studies.archive import keys


class Command(BaseCommand):
    help = "Re-wrap all clinic keys under the current master key; old master keys can then be retired."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--generate",
            metavar="ID",
            help="Only print a new 'ID:base64key' entry to put first in MASTER_KEYS, then exit.",
        )
        parser.add_argument(
            "--republish",
            action="store_true",
            help="Also write every wrapped key document to both stores again (after a store outage).",
        )

    def handle(self, *args: object, generate: str | None = None, republish: bool = False, **options: object) -> None:
        if generate:
            try:
                self.stdout.write(keys.master_key_generate(generate))
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            self.stderr.write("Put this entry first in MASTER_KEYS, restart, then run rotate_master_key again.")
            return

        result = keys.master_key_rotate()
        self.stdout.write(
            f"Current master key: {result.master_key_id}. Re-wrapped {len(result.rewrapped)} clinic key(s); "
            f"{result.already_current} already current."
        )
        unpublished = list(result.unpublished)
        if republish:
            unpublished = keys.clinic_keys_publish()
        configured = keys.master_keyring()
        in_use = keys.master_keys_in_use()
        for master_id in configured:
            if master_id == result.master_key_id:
                continue
            if in_use.get(master_id):
                self.stdout.write(f"Master key {master_id} still wraps {in_use[master_id]} clinic key(s): keep it.")
            else:
                self.stdout.write(f"Master key {master_id} wraps no clinic key any more: it can be removed.")
        for key_id, message in result.failed.items():
            self.stderr.write(f"Clinic key {key_id}: {message}")
        for key_id in unpublished:
            self.stderr.write(f"Clinic key {key_id}: re-wrapped but its document is not in both stores yet.")
        if result.failed or unpublished:
            raise CommandError(
                f"{len(result.failed)} key(s) could not be re-wrapped and {len(unpublished)} not published; "
                "fix the cause and run the command again (it is safe to repeat)."
            )
        self.stdout.write(self.style.SUCCESS("All clinic keys are wrapped by the current master key."))

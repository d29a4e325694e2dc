"""Control-plane backup: encrypted SQLite snapshots in the replica store, and audit chain anchors."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.utils import timezone

from studies.archive import stores
from studies.archive.errors import ObjectCorrupt
from studies.backup import database
from tenants.audit import audit_record
from tests.studies.backup_support import local_path


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


def make_sqlite(path: Path, rows: list[str]) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS notes (body TEXT)")
        conn.executemany("INSERT INTO notes VALUES (?)", [(row,) for row in rows])


def notes(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT body FROM notes ORDER BY rowid")]


def test_snapshot_in_the_replica_is_encrypted(tmp_path, settings):
    source = tmp_path / "db.sqlite3"
    make_sqlite(source, ["user alice@example.org signed up"])

    snapshot = database.database_snapshot_create(database_path=source)

    stored = local_path(settings.REPLICA_STORE_URL, snapshot.data_key).read_bytes()
    assert stored.startswith(b"PXAE")
    assert b"alice@example.org" not in stored
    assert b"SQLite format" not in stored


def test_restore_at_a_time_brings_back_the_newest_snapshot_before_it(tmp_path):
    source = tmp_path / "db.sqlite3"
    make_sqlite(source, ["first"])
    first = database.database_snapshot_create(database_path=source)
    make_sqlite(source, ["second"])
    database.database_snapshot_create(database_path=source)

    restored = database.database_snapshot_restore(at=first.created_at + timedelta(microseconds=1),
                                                  database_path=source)

    assert restored.snapshot_id == first.snapshot_id
    assert notes(source) == ["first"]
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("db.sqlite3.before-restore-")]
    assert len(kept) == 1 and notes(kept[0]) == ["first", "second"]


def test_unchanged_database_writes_no_new_snapshot(tmp_path):
    source = tmp_path / "db.sqlite3"
    make_sqlite(source, ["only"])
    database.database_snapshot_create(database_path=source)

    again = database.database_snapshot_create(database_path=source)

    assert again is None
    assert len(database.database_snapshot_list()) == 1


def test_tampered_snapshot_is_refused_and_the_database_is_left_alone(tmp_path, settings):
    source = tmp_path / "db.sqlite3"
    make_sqlite(source, ["good"])
    snapshot = database.database_snapshot_create(database_path=source)
    path = local_path(settings.REPLICA_STORE_URL, snapshot.data_key)
    data = bytearray(path.read_bytes())
    data[-20] ^= 1
    path.write_bytes(bytes(data))
    make_sqlite(source, ["newer"])

    with pytest.raises(ObjectCorrupt):
        database.database_snapshot_restore(database_path=source)

    assert notes(source) == ["good", "newer"]


def test_restore_before_the_first_snapshot_says_there_is_none(tmp_path):
    source = tmp_path / "db.sqlite3"
    make_sqlite(source, ["x"])
    snapshot = database.database_snapshot_create(database_path=source)

    with pytest.raises(database.DatabaseBackupError, match="no database snapshot at or before"):
        database.database_snapshot_restore(at=snapshot.created_at - timedelta(seconds=1), database_path=source)

    assert notes(source) == ["x"]


def test_anchors_match_the_log_they_were_taken_from(clinic):
    audit_record(clinic=clinic, action="member.invited")
    audit_record(clinic=None, action="auth.login")

    key = database.audit_anchor_write()

    assert key is not None and stores.get_store("replica").exists(key)
    assert database.audit_anchors_check() == []


def test_anchor_beyond_the_restored_log_reports_the_lost_entries(clinic):
    event = audit_record(clinic=clinic, action="member.invited")
    anchored = {str(clinic.uuid): {"sequence": event.sequence + 2, "hash": "f" * 64}}

    from tenants.audit import audit_anchor_check

    problems = audit_anchor_check(chains=anchored)

    assert [(p.kind, p.sequence) for p in problems] == [("lost", event.sequence + 1)]


def test_anchor_with_another_hash_reports_a_changed_log(clinic):
    event = audit_record(clinic=clinic, action="member.invited")

    from tenants.audit import audit_anchor_check

    problems = audit_anchor_check(chains={str(clinic.uuid): {"sequence": event.sequence, "hash": "0" * 64}})

    assert [p.kind for p in problems] == ["changed"]


def test_prune_keeps_recent_snapshots_and_one_a_day(tmp_path, settings):
    settings.DATABASE_BACKUP_KEEP_HOURS = 1
    settings.DATABASE_BACKUP_KEEP_DAYS = 30
    source = tmp_path / "db.sqlite3"
    for number in range(3):
        make_sqlite(source, [f"row {number}"])
        database.database_snapshot_create(database_path=source)

    # Two hours later the two older ones of that day go; the newest of the day stays.
    removed = database.database_backups_prune(now=timezone.now() + timedelta(hours=2))

    assert removed == 2
    assert len(database.database_snapshot_list()) == 1


@pytest.mark.postgresql
def test_backup_database_on_postgresql_without_a_data_directory_says_what_to_set(settings):
    settings.DATABASE_BACKUP_PG_PATH = ""

    with pytest.raises(CommandError, match="DATABASE_BACKUP_PG_PATH"):
        call_command("backup_database")

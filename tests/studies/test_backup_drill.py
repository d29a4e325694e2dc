"""Scheduled restore tests: sample studies and the latest database backup restored into a scratch area."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from studies.backup import database, drill, replication
from studies.models import RestoreDrill
from tests.dicom_files import write_dicom_files
from tests.factories import ingest_files
from tests.studies.backup_support import (
    backup_cache_clear,  # noqa: F401 - autouse
    local_path,
)


@pytest.fixture
def replicated(clinic, tmp_path):
    instances = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path / "in", count=4, studies=2))
    for instance in instances:
        replication.instance_replicate(instance=instance)
    return instances


@pytest.fixture
def database_backed_up(tmp_path) -> drill.DatabaseRestoreCheck:
    """A real SQLite snapshot in the replica, restored and checked into a scratch folder."""
    cache.clear()
    source = tmp_path / "control.sqlite3"
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE accounts (email TEXT)")
    snapshot = database.database_snapshot_create(database_path=source)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    database.database_snapshot_check(snapshot, folder=scratch)
    return drill.DatabaseRestoreCheck(True, snapshot.snapshot_id)


def test_restore_test_passes_and_the_backup_page_says_so(client, clinic, admin, replicated, database_backed_up):
    [run] = drill.restore_drill_run(clinic=clinic, sample=3, database_check=database_backed_up)
    RestoreDrill.objects.filter(pk=run.pk).update(finished_at=timezone.now() - timedelta(days=3, hours=2))
    client.force_login(admin)

    html = client.get(f"/c/{clinic.slug}/backup/").content.decode()

    assert (run.passed, run.studies_checked, run.instances_checked) == (True, 2, 4)
    assert "last restore test: passed, 3 days ago" in html


def test_damaged_replica_copy_fails_the_restore_test(client, clinic, admin, replicated, settings,
                                                     database_backed_up):
    path = local_path(settings.REPLICA_STORE_URL, replicated[0].object_key)
    data = bytearray(path.read_bytes())
    data[300] ^= 1
    path.write_bytes(bytes(data))

    [run] = drill.restore_drill_run(clinic=clinic, sample=3, database_check=database_backed_up)

    assert not run.passed
    assert str(replicated[0].uuid) in run.problems[0]
    client.force_login(admin)
    assert "last restore test: failed" in client.get(f"/c/{clinic.slug}/backup/").content.decode()


def test_missing_database_backup_fails_the_restore_test(clinic, replicated):
    check = drill.DatabaseRestoreCheck(False, "", "The backup store holds no database snapshot.")

    [run] = drill.restore_drill_run(clinic=clinic, database_check=check)

    assert not run.passed and run.problems == ["database: The backup store holds no database snapshot."]


def test_restore_test_writes_nothing_outside_its_scratch_area(clinic, replicated, settings, database_backed_up):
    primary = sorted(p.name for p in local_path(settings.PRIMARY_STORE_URL, "clinics").rglob("*"))
    replica = sorted(p.name for p in local_path(settings.REPLICA_STORE_URL, "clinics").rglob("*"))

    drill.restore_drill_run(clinic=clinic, database_check=database_backed_up)

    assert sorted(p.name for p in local_path(settings.PRIMARY_STORE_URL, "clinics").rglob("*")) == primary
    assert sorted(p.name for p in local_path(settings.REPLICA_STORE_URL, "clinics").rglob("*")) == replica


def test_api_reports_the_last_restore_test(client, clinic, admin, replicated, database_backed_up):
    [run] = drill.restore_drill_run(clinic=clinic, database_check=database_backed_up)
    client.force_login(admin)

    body = client.get(f"/api/v1/clinics/{clinic.slug}/backup/").json()

    assert body["last_restore_test_passed"] is True
    assert body["last_restore_test_at"] is not None


def test_outsider_sees_neither_the_page_nor_the_other_clinics_result(client, clinic, other_clinic, outsider,
                                                                     replicated, database_backed_up):
    drill.restore_drill_run(clinic=clinic, database_check=database_backed_up)
    client.force_login(outsider)

    assert client.get(f"/c/{clinic.slug}/backup/").status_code == 404
    assert client.get(f"/api/v1/clinics/{clinic.slug}/backup/").status_code == 404
    assert not RestoreDrill.objects.for_clinic(other_clinic).exists()


def test_scheduled_drill_runs_only_when_due(settings, clinic, replicated):
    settings.RESTORE_DRILL_INTERVAL_DAYS = 7
    RestoreDrill.objects.create(clinic=clinic, finished_at=timezone.now(), passed=True)

    assert not drill.restore_drill_due()
    RestoreDrill.objects.update(started_at=timezone.now() - timedelta(days=8))
    assert drill.restore_drill_due()

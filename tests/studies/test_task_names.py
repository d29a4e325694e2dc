"""Every Celery task keeps the name it was registered under before the studies.tasks hub was split, so
messages already queued (and the beat schedule) still resolve; every name the code queues by resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from celery import current_app
from django.conf import settings

# Registered name -> the module that now holds the task.
MOVED = {
    "studies.tasks.upload_zip_extract": "studies.ingest.tasks",
    "studies.tasks.upload_staging_replicate": "studies.ingest.tasks",
    "studies.tasks.intake_sweep": "studies.ingest.tasks",
    "studies.tasks.quarantined_replicate": "studies.quarantine.tasks",
    "studies.tasks.quarantine_notify": "studies.quarantine.tasks",
    "studies.tasks.anonymization_job_start": "studies.anonymize.tasks",
    "studies.tasks.anonymization_instances": "studies.anonymize.tasks",
    "studies.tasks.anonymization_instance": "studies.anonymize.tasks",
    "studies.tasks.series_thumbnail_render": "studies.browse.tasks",
    "studies.tasks.study_purge": "studies.browse.tasks",
    "studies.tasks.studies_trash_purge": "studies.browse.tasks",
    "studies.exports.tasks.clinic_export_build": "studies.exports.tasks",
    "studies.exports.tasks.clinic_exports_expire": "studies.exports.tasks",
    "studies.backup.tasks.instance_replicate": "studies.backup.tasks",
    "studies.backup.tasks.instances_replicate": "studies.backup.tasks",
    "studies.backup.tasks.replication_sweep": "studies.backup.tasks",
    "studies.backup.tasks.replica_reconcile": "studies.backup.tasks",
    "studies.backup.tasks.backup_verify_batch": "studies.backup.tasks",
    "studies.backup.tasks.object_repair": "studies.backup.tasks",
    "studies.backup.tasks.replica_purge": "studies.backup.tasks",
}


@pytest.mark.parametrize("name", sorted(MOVED))
def test_a_message_queued_under_the_old_name_runs_the_task_in_its_new_home(name):
    assert current_app.tasks[name].__module__ == MOVED[name]


def test_the_hub_is_gone_and_nothing_is_re_exported():
    studies = Path(__file__).resolve().parents[2] / "studies"
    assert not (studies / "tasks.py").exists()
    backup_names = [name.rsplit(".", 1)[1] for name, module in MOVED.items() if module == "studies.backup.tasks"]
    for path in studies.rglob("tasks.py"):
        if path.parent.name != "backup":
            text = path.read_text()
            assert not re.search(rf"^from studies\.backup\.tasks import .*\b({'|'.join(backup_names)})\b", text, re.M), path


def test_every_beat_entry_and_route_names_a_registered_task():
    current_app.loader.import_default_modules()  # what a worker and beat load at start (autodiscovery)
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in current_app.tasks, entry["task"]
    for name in settings.CELERY_TASK_ROUTES:
        assert name in current_app.tasks, name


def test_the_beat_runs_the_moved_sweeps_under_their_scheduled_names(db):
    for entry in ("studies-trash-purge", "studies-intake-sweep"):
        result = current_app.tasks[settings.CELERY_BEAT_SCHEDULE[entry]["task"]].apply().get()
        assert result in (0, {"batches": 0, "staged": 0, "quarantined": 0}), (entry, result)


def test_every_task_name_the_code_queues_by_is_registered():
    """Services queue their own package's tasks by name (the tasks module imports the service): a typo
    there would only fail when the message is consumed."""
    root = Path(__file__).resolve().parents[2]
    literal = re.compile(r"""(?:current_app\.tasks\[|_TASK = |signature\()\s*["']([\w.]+)["']""")
    names = {match for path in (root / "studies").rglob("*.py") for match in literal.findall(path.read_text())}
    assert "studies.tasks.upload_zip_extract" in names  # the scan sees the by-name queueing
    assert not sorted(name for name in names if name not in current_app.tasks)

"""ZIP uploads never stall and are backed up while staged (issue 11, item 4).

A lost queue message and a worker killed with SIGKILL mid-unpack are both recovered by the intake sweep
(what beat runs every minute), against a real ``celery -A portal worker`` subprocess on the test Redis.
"""

from __future__ import annotations

import zipfile
from datetime import timedelta
from http import HTTPStatus

import pytest
from django.utils import timezone

from studies.archive import stores
from studies.ingest import tasks, uploads
from studies.models import Instance, UploadBatch, UploadItem
from tests.dicom_files import write_ct
from tests.studies import test_backup_faults as faults
from tests.studies.backup_support import celery_eager

# The real worker subprocess of the backup fault tests, shared as fixtures.
broker_url = faults.broker_url
worker_factory = faults.worker_factory
_wait_for = faults._wait_for

def make_zip(tmp_path, count):
    archive = tmp_path / "cd.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for number in range(count):
            zf.writestr(
                f"IMG/{number:04d}",
                write_ct(tmp_path / "m" / f"{number}.dcm", pixel_seed=number, instance_number=number).read_bytes(),
            )
    return archive


def stage(clinic, archive):
    with archive.open("rb") as source:
        return uploads.upload_zip_stage(
            clinic=clinic, source=source, name="cd.zip", size=archive.stat().st_size, created_by=None
        )


def members_done(batch) -> int:
    return UploadItem.objects.filter(batch=batch).count()


def test_a_staged_archive_is_copied_to_the_replica_and_swept_when_the_copy_was_lost(clinic, tmp_path):
    batch = stage(clinic, make_zip(tmp_path, 2))  # its on-commit copy never ran: as if the message was lost
    UploadBatch.objects.filter(pk=batch.pk).update(created_at=timezone.now() - timedelta(minutes=5))

    with celery_eager():
        swept = tasks.intake_sweep.apply().get()

    assert swept["staged"] == 1
    assert stores.get_store("replica").exists(batch.staging_key)
    assert UploadBatch.objects.get().staging_replicated_at is not None


def test_unpacking_from_the_replica_when_the_primary_lost_the_staged_archive(clinic, tmp_path):
    batch = stage(clinic, make_zip(tmp_path, 2))
    tasks.upload_staging_replicate(clinic_id=clinic.pk, batch_id=batch.pk)
    stores.get_store("primary").delete(batch.staging_key)

    tasks.upload_zip_extract(clinic_id=clinic.pk, batch_id=batch.pk)

    assert UploadBatch.objects.get().status == "done"
    assert Instance.objects.for_clinic(clinic).count() == 2


@pytest.mark.postgresql
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_an_archive_whose_queue_message_was_lost_is_swept_and_unpacked(clinic, tmp_path, worker_factory, settings):
    batch = stage(clinic, make_zip(tmp_path, 3))  # staged, but the unpack message never reached the broker
    settings.UPLOAD_ZIP_STALE_SECONDS = 60
    UploadBatch.objects.filter(pk=batch.pk).update(created_at=timezone.now() - timedelta(minutes=2))
    worker = worker_factory()
    worker.start()

    tasks.intake_sweep()
    _wait_for(lambda: UploadBatch.objects.get().status == "done", 60, "the swept archive to be unpacked")

    assert Instance.objects.for_clinic(clinic).count() == 3
    assert UploadBatch.objects.get().staging_key == ""
    assert not stores.get_store("primary").exists(batch.staging_key)


@pytest.mark.postgresql
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_unpacking_killed_with_sigkill_is_resumed_by_the_sweep_and_loses_nothing(
    client, clinic, uploader, tmp_path, worker_factory, settings
):
    count = 120
    archive = make_zip(tmp_path, count)
    client.force_login(uploader)
    with archive.open("rb") as fileobj:
        response = client.post(f"/c/{clinic.slug}/upload/files/", {"file": fileobj, "path": "cd.zip"})
    assert response.status_code == HTTPStatus.ACCEPTED
    batch = UploadBatch.objects.get()
    worker = worker_factory()
    worker.start()
    _wait_for(lambda: members_done(batch) >= 10, 60, "the worker to start unpacking")
    worker.kill()
    done_at_kill = members_done(batch)
    assert done_at_kill < count, "the worker finished before it could be killed"
    assert UploadBatch.objects.get().status == "running"

    # The dead worker's message stays unacknowledged; once the batch has been untouched for the stale
    # period, the sweep hands it out again.
    settings.UPLOAD_ZIP_STALE_SECONDS = 1
    _wait_for(lambda: tasks.intake_sweep()["batches"] == 1, 10, "the sweep to notice the stalled archive")
    worker = worker_factory()
    worker.start()
    _wait_for(lambda: UploadBatch.objects.get().status == "done", 120, "unpacking to finish after the restart")

    counts = uploads.upload_batch_counts(batch=batch)
    assert counts["stored"] + counts["already_present"] == count
    assert counts["rejected"] == 0
    assert Instance.objects.for_clinic(clinic).count() == count
    assert UploadItem.objects.filter(batch=batch).count() == count

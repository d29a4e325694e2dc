"""instance_ingest: store, index, deduplicate, refuse conflicts, enforce the quota, leave nothing behind."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from django.db import connection
from pydicom.uid import generate_uid

from studies.archive import objects
from studies.archive.errors import StorageUnavailable
from studies.errors import InstanceConflict, InvalidDicom, QuotaExceeded
from studies.ingest import IngestOutcome, instance_ingest
from studies.models import Instance, Patient, Series, Study
from tenants.models import AuditEvent, Clinic
from tests.dicom_files import copy_sample, write_ct


def _stored_object_files(settings) -> list[Path]:
    root = Path(settings.PRIMARY_STORE_URL.removeprefix("file://"))
    # Only instance objects: the archive also keeps wrapped clinic keys in the store.
    return [p for p in root.rglob("*") if p.is_file() and p.parent.name == "objects"] if root.exists() else []


def _used_bytes(clinic: Clinic) -> int:
    return Clinic.objects.values_list("used_bytes", flat=True).get(pk=clinic.pk)


def test_ingest_stores_the_encrypted_object_and_indexes_it(clinic, tmp_path, settings):
    path = write_ct(tmp_path / "ct.dcm", patient_id="PID-1", patient_name="Doe^Jane")
    original = path.read_bytes()

    result = instance_ingest(clinic=clinic, source_path=str(path))

    assert result.outcome == IngestOutcome.STORED
    instance = Instance.objects.for_clinic(clinic).get()
    study = Study.objects.for_clinic(clinic).get()
    assert (study.number_of_series, study.number_of_instances, study.size_bytes) == (1, 1, len(original))
    assert study.modalities_in_study == "CT"
    assert study.patient.patient_id == "PID-1"
    assert Series.objects.for_clinic(clinic).get().number_of_instances == 1
    assert instance.size_bytes == len(original)
    assert instance.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert _used_bytes(clinic) == len(original)
    with objects.object_open(clinic=clinic, key=instance.object_key) as stored:
        assert stored.read() == original
    (object_file,) = _stored_object_files(settings)
    assert original[-512:] not in object_file.read_bytes()
    assert "PID-1" not in instance.object_key


def test_new_study_is_audited_without_patient_data(clinic, tmp_path):
    path = write_ct(tmp_path / "ct.dcm", patient_id="PID-SECRET", patient_name="Secret^Name")

    instance_ingest(clinic=clinic, source_path=str(path))

    event = AuditEvent.objects.for_clinic(clinic).get(action="study.stored")
    assert event.object_id == str(Study.objects.for_clinic(clinic).get().uuid)
    assert "SECRET" not in str(event.details) and "Secret" not in str(event.details)


def test_same_file_twice_is_already_present_and_changes_nothing(clinic, tmp_path):
    path = write_ct(tmp_path / "ct.dcm")
    first = instance_ingest(clinic=clinic, source_path=str(path))
    used = _used_bytes(clinic)

    second = instance_ingest(clinic=clinic, source_path=str(path))

    assert second.outcome == IngestOutcome.ALREADY_PRESENT
    assert second.instance.pk == first.instance.pk
    assert Study.objects.for_clinic(clinic).get().number_of_instances == 1
    assert _used_bytes(clinic) == used


def test_same_uid_with_other_content_is_a_logged_conflict_and_keeps_the_stored_one(clinic, tmp_path, settings):
    sop_uid = generate_uid()
    first = write_ct(tmp_path / "a.dcm", sop_uid=sop_uid, pixel_seed=1)
    other = write_ct(tmp_path / "b.dcm", sop_uid=sop_uid, pixel_seed=2)
    stored = instance_ingest(clinic=clinic, source_path=str(first)).instance

    with pytest.raises(InstanceConflict):
        instance_ingest(clinic=clinic, source_path=str(other))

    instance = Instance.objects.for_clinic(clinic).get()
    assert instance.sha256 == stored.sha256
    with objects.object_open(clinic=clinic, key=instance.object_key) as data:
        assert data.read() == first.read_bytes()
    assert len(_stored_object_files(settings)) == 1
    assert AuditEvent.objects.for_clinic(clinic).get(action="instance.conflict").object_id == str(instance.uuid)


def test_invalid_file_stores_nothing(clinic, tmp_path, settings):
    path = write_ct(tmp_path / "ct.dcm")
    path.write_bytes(path.read_bytes()[:-100])

    with pytest.raises(InvalidDicom):
        instance_ingest(clinic=clinic, source_path=str(path))

    assert not Instance.objects.exists() and not Study.objects.exists() and not Patient.objects.exists()
    assert _stored_object_files(settings) == []
    assert _used_bytes(clinic) == 0


def test_upload_over_the_quota_is_refused_with_the_space_left(clinic, tmp_path, settings):
    path = write_ct(tmp_path / "ct.dcm", rows=64, columns=64)
    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=4000)

    with pytest.raises(QuotaExceeded, match="only 4.0 KB") as excinfo:
        instance_ingest(clinic=clinic, source_path=str(path))

    assert excinfo.value.details["bytes_left"] == 4000
    assert not Instance.objects.exists()
    assert _stored_object_files(settings) == []
    assert _used_bytes(clinic) == 0


def test_storage_failure_leaves_no_index_row_and_releases_the_quota(clinic, tmp_path, settings):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    settings.PRIMARY_STORE_URL = (blocker / "primary").as_uri()
    path = write_ct(tmp_path / "ct.dcm")

    with pytest.raises(StorageUnavailable):
        instance_ingest(clinic=clinic, source_path=str(path))

    assert not Instance.objects.exists() and not Study.objects.exists()
    assert _used_bytes(clinic) == 0


def test_failure_after_storing_deletes_the_object(clinic, tmp_path, settings):
    series_uid = generate_uid()
    instance_ingest(clinic=clinic, source_path=str(write_ct(tmp_path / "a.dcm", series_uid=series_uid)))
    used = _used_bytes(clinic)
    # Same series UID, but claims another study: refused while indexing, after the object was written.
    stray = write_ct(tmp_path / "b.dcm", series_uid=series_uid)

    with pytest.raises(InvalidDicom, match="another study"):
        instance_ingest(clinic=clinic, source_path=str(stray))

    assert Instance.objects.count() == 1 and Study.objects.count() == 1
    assert len(_stored_object_files(settings)) == 1
    assert _used_bytes(clinic) == used


def test_instances_of_other_clinics_are_independent(clinic, other_clinic, tmp_path):
    path = write_ct(tmp_path / "ct.dcm")
    instance_ingest(clinic=clinic, source_path=str(path))

    result = instance_ingest(clinic=other_clinic, source_path=str(path))

    assert result.outcome == IngestOutcome.STORED
    assert Instance.objects.for_clinic(other_clinic).count() == 1


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm", "SC_rgb_rle_2frame.dcm"]
)
def test_sample_files_are_stored_byte_for_byte(clinic, tmp_path, name):
    path = copy_sample(name, tmp_path / name)

    instance = instance_ingest(clinic=clinic, source_path=str(path)).instance

    with objects.object_open(clinic=clinic, key=instance.object_key) as stored:
        assert stored.read() == path.read_bytes()


def test_commit_queues_replication(clinic, tmp_path, settings, django_capture_on_commit_callbacks):
    settings.REPLICATION_MODE = "sync"
    path = write_ct(tmp_path / "ct.dcm")

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        instance = instance_ingest(clinic=clinic, source_path=str(path)).instance

    assert callbacks
    instance.refresh_from_db()
    assert instance.replicated_at is not None


def _run_in_threads(jobs: list, workers: int = 8) -> list:
    results: list = [None] * len(jobs)
    lock = threading.Lock()
    pending = list(enumerate(jobs))

    def work() -> None:
        try:
            while True:
                with lock:
                    if not pending:
                        return
                    index, job = pending.pop()
                try:
                    results[index] = job()
                except Exception as exc:  # noqa: BLE001 - collected for the assertions
                    results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_concurrent_uploads_of_one_study_keep_every_count(clinic, tmp_path):
    study_uid = generate_uid()
    series_uids = [generate_uid() for _ in range(3)]
    files = [
        write_ct(
            tmp_path / f"{i}.dcm",
            study_uid=study_uid,
            series_uid=series_uids[i % 3],
            instance_number=i,
            modality=["CT", "MR", "PT"][i % 3],
        )
        for i in range(24)
    ]

    results = _run_in_threads([lambda p=p: instance_ingest(clinic=clinic, source_path=str(p)) for p in files])

    assert all(r.outcome == IngestOutcome.STORED for r in results), results
    study = Study.objects.for_clinic(clinic).get()
    assert (study.number_of_series, study.number_of_instances) == (3, 24)
    assert study.size_bytes == sum(p.stat().st_size for p in files)
    assert study.modalities_in_study == "CT\\MR\\PT"
    assert sorted(Series.objects.for_clinic(clinic).values_list("number_of_instances", flat=True)) == [8, 8, 8]
    assert _used_bytes(clinic) == study.size_bytes


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_parallel_uploads_cannot_pass_the_quota_together(clinic, tmp_path):
    files = [write_ct(tmp_path / f"{i}.dcm") for i in range(12)]
    size = files[0].stat().st_size
    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=size * 5 + size // 2)

    results = _run_in_threads([lambda p=p: instance_ingest(clinic=clinic, source_path=str(p)) for p in files])

    assert sum(not isinstance(r, Exception) for r in results) == 5
    assert all(isinstance(r, QuotaExceeded) for r in results if isinstance(r, Exception))
    assert Instance.objects.for_clinic(clinic).count() == 5
    stored_bytes = sum(Instance.objects.for_clinic(clinic).values_list("size_bytes", flat=True))
    assert _used_bytes(clinic) == stored_bytes


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_the_same_new_file_uploaded_in_parallel_is_stored_once(clinic, tmp_path, settings):
    path = write_ct(tmp_path / "ct.dcm")

    results = _run_in_threads([lambda: instance_ingest(clinic=clinic, source_path=str(path))] * 6, workers=6)

    outcomes = sorted(r.outcome for r in results)
    assert outcomes.count(IngestOutcome.STORED) == 1, results
    assert outcomes.count(IngestOutcome.ALREADY_PRESENT) == 5
    assert len(_stored_object_files(settings)) == 1
    assert _used_bytes(clinic) == path.stat().st_size


def test_ingest_into_s3_stores_and_reads_back(s3_stores, clinic, tmp_path):
    path = write_ct(tmp_path / "ct.dcm", rows=256, columns=256)

    instance = instance_ingest(clinic=clinic, source_path=str(path)).instance

    with objects.object_open(clinic=clinic, key=instance.object_key) as stored:
        assert stored.read() == path.read_bytes()


def test_an_instance_is_named_like_its_object_so_a_rebuilt_index_keeps_its_uuids(clinic, tmp_path):
    from tests.dicom_files import copy_sample

    instance = instance_ingest(clinic=clinic, source_path=str(copy_sample("CT_small.dcm", tmp_path / "a.dcm"))).instance

    assert instance.object_key == f"clinics/{clinic.uuid}/objects/{instance.uuid}"

"""Index sidecars: each replicated batch is described in the backup store, so rebuild_index needs no parsing.

Correctness never depends on a sidecar: a lost, damaged or disagreeing one means the objects are decoded.
"""

from __future__ import annotations

import uuid

import pytest
from django.core.management import call_command
from django.db import transaction

from studies.archive import keys, objects, stores
from studies.backup import index_sidecar, recovery, replication, verification
from studies.browse import services as browse_services
from studies.ingest import Origin, instances_ingest
from studies.models import ClinicKey, Instance, Patient, Series, Study
from tests.dicom_files import write_dicom_files
from tests.factories import ingest_files, make_study, token_for
from tests.studies.backup_support import (
    backup_cache_clear,  # noqa: F401 - autouse
    celery_eager,
    ingest_replicated,
    local_path,
    lose_the_database,
    stored_bytes,
)

BASE = "/dicomweb/clinic-a/"


def index_state(clinic) -> dict:
    """What the index answers: rows without their ids and timestamps, counters, usage, headers."""
    return {
        "used_bytes": type(clinic).objects.get(pk=clinic.pk).used_bytes,
        "patients": sorted(Patient.objects.for_clinic(clinic).values_list(
            "patient_id", "issuer_of_patient_id", "patient_name", "patient_birth_date", "patient_sex")),
        "studies": sorted(Study.objects.for_clinic(clinic).values_list(
            "study_instance_uid", "patient__patient_id", "study_date", "study_time", "accession_number",
            "study_description", "referring_physician_name", "number_of_series", "number_of_instances",
            "size_bytes", "modalities_in_study", "body_part_examined", "deleted_at")),
        "series": sorted(Series.objects.for_clinic(clinic).values_list(
            "series_instance_uid", "study__study_instance_uid", "modality", "series_number", "series_description",
            "body_part_examined", "number_of_instances")),
        "instances": sorted(Instance.objects.for_clinic(clinic).values_list(
            "uuid", "sop_instance_uid", "sop_class_uid", "series__series_instance_uid", "object_key", "key_id",
            "sha256", "size_bytes", "instance_number", "number_of_frames", "rows", "columns",
            "transfer_syntax_uid", "metadata")),
    }


def by_study_uid(answer: list[dict]) -> list[dict]:
    # The same studies, matched in the order they were (re)created: compare them in UID order.
    return sorted(answer, key=lambda study: study["0020000D"]["Value"][0])


def sidecar_files(settings, clinic) -> list:
    return [local_path(settings.REPLICA_STORE_URL, key) for key in index_sidecar.sidecar_keys(clinic=clinic)]


@pytest.fixture
def archive(clinic, tmp_path, django_capture_on_commit_callbacks) -> list[Instance]:
    """Two batches of two studies each, replicated the way ingest queues it."""
    first = ingest_replicated(clinic, write_dicom_files(tmp_path / "a", count=4, studies=2),
                              django_capture_on_commit_callbacks)
    second = ingest_replicated(clinic, write_dicom_files(tmp_path / "b", count=3, studies=1, patient_id="BK-2"),
                               django_capture_on_commit_callbacks)
    return first + second


def test_each_replicated_batch_writes_one_encrypted_sidecar(clinic, archive, settings):
    sidecars = index_sidecar.sidecar_keys(clinic=clinic)

    assert len(sidecars) == 2
    clinic_keys = {row.key_id: keys.clinic_key_for_object(clinic=clinic, key_id=row.key_id)
                   for row in ClinicKey.objects.for_clinic(clinic)}
    described = {
        entry.key: (entry.sha256, entry.size_bytes, entry.parsed.sop_instance_uid)
        for key in sidecars
        for entry in index_sidecar.index_sidecar_read(clinic=clinic, key=key, clinic_keys=clinic_keys)
    }
    assert described == {i.object_key: (i.sha256, i.size_bytes, i.sop_instance_uid) for i in archive}
    for key in sidecars:  # encrypted: no UID, no patient id in the stored bytes
        raw = stored_bytes("replica", key)
        assert archive[0].sop_instance_uid.encode() not in raw and b"BK-1" not in raw


def test_rebuild_from_sidecars_gives_back_the_index_ingest_wrote(clinic, archive, client):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(clinic)}"
    study_uid = archive[0].series.study.study_instance_uid
    before = index_state(clinic)
    search_before = client.get(f"{BASE}studies").json()
    metadata_before = client.get(f"{BASE}studies/{study_uid}/metadata").json()
    lose_the_database()

    report = recovery.index_rebuild(jobs=1)

    assert (report.indexed, report.from_sidecars, report.decoded, report.failed) == (7, 7, 0, [])
    assert index_state(clinic) == before
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(clinic)}"
    assert by_study_uid(client.get(f"{BASE}studies").json()) == by_study_uid(search_before)
    assert client.get(f"{BASE}studies/{study_uid}/metadata").json() == metadata_before


def test_instances_from_sidecars_are_left_for_the_verifier_which_checks_them(clinic, archive):
    lose_the_database()
    recovery.index_rebuild(jobs=1)
    assert not Instance.objects.for_clinic(clinic).filter(replica_verified_at__isnull=False).exists()

    run = verification.verification_run(clinic=clinic)

    assert (run.checked, run.failed) == (7, 0)
    assert not Instance.objects.for_clinic(clinic).filter(replica_verified_at__isnull=True).exists()


def test_rebuild_with_verify_digests_each_object_and_marks_it_verified(clinic, archive, capsys):
    lose_the_database()

    call_command("rebuild_index", "--verify", "--jobs", "2")

    out = capsys.readouterr().out
    assert "7 indexed" in out and "7 from 2 index sidecars" in out and "0 decoded" in out
    assert Instance.objects.for_clinic(clinic).filter(replica_verified_at__isnull=False).count() == 7


def test_a_corrupted_sidecar_falls_back_to_decoding(clinic, archive, settings):
    before = index_state(clinic)
    damaged, _ = sidecar_files(settings, clinic)
    data = bytearray(damaged.read_bytes())
    data[-5] ^= 0xFF
    damaged.write_bytes(bytes(data))
    lose_the_database()

    report = recovery.index_rebuild(jobs=1)

    assert report.sidecars_unreadable == 1 and report.failed == []
    assert report.from_sidecars + report.decoded == 7 and report.decoded in (3, 4)
    assert index_state(clinic) == before


def test_lost_sidecars_fall_back_to_decoding(clinic, archive, settings):
    before = index_state(clinic)
    for path in sidecar_files(settings, clinic):
        path.unlink()
    lose_the_database()

    report = recovery.index_rebuild(jobs=2)

    assert (report.from_sidecars, report.decoded, report.failed) == (0, 7, [])
    assert index_state(clinic) == before


def test_an_instance_no_sidecar_describes_is_still_rebuilt(clinic, archive, tmp_path):
    # Replicated one by one (as before sidecars existed): on the replica, in no sidecar.
    [older] = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path / "old", count=1, patient_id="OLD"))
    replication.instance_replicate(instance=older)
    before = index_state(clinic)
    lose_the_database()

    report = recovery.index_rebuild(jobs=1)

    assert (report.indexed, report.from_sidecars, report.decoded) == (8, 7, 1)
    assert index_state(clinic) == before


def test_an_object_that_differs_from_its_sidecar_is_decoded_instead(clinic, archive, tmp_path):
    # The replica's copy is another file under the same name (the sidecar describes the first one).
    replaced = archive[0]
    other = write_dicom_files(tmp_path / "other", count=1, studies=1, patient_id="OTHER", source="MR_small.dcm")[0]
    with other.open("rb") as source:
        stored = objects.object_put(clinic=clinic, source=source, store="replica",
                                    object_uuid=uuid.UUID(replaced.object_key.rsplit("/", 1)[1]))
    lose_the_database()

    report = recovery.index_rebuild(jobs=1)

    assert (report.indexed, report.from_sidecars, report.decoded, report.sidecar_mismatches) == (7, 6, 1, 1)
    row = Instance.objects.for_clinic(clinic).get(object_key=replaced.object_key)
    assert (row.sha256, row.size_bytes) == (stored.sha256, stored.size_bytes)
    assert row.sop_instance_uid != replaced.sop_instance_uid


def test_a_sidecar_never_indexes_an_object_the_replica_does_not_hold(clinic, archive):
    gone = archive[1]
    stores.get_store("replica").delete(gone.object_key)
    lose_the_database()

    report = recovery.index_rebuild(jobs=1)

    assert (report.indexed, report.failed) == (6, [])
    assert not Instance.objects.for_clinic(clinic).filter(sop_instance_uid=gone.sop_instance_uid).exists()


def test_a_batch_whose_index_transaction_rolls_back_writes_no_sidecar(clinic, tmp_path, settings,
                                                                      django_capture_on_commit_callbacks):
    settings.REPLICATION_MODE = "sync"  # its objects reach the replica before the index transaction
    paths = write_dicom_files(tmp_path / "in", count=2)

    with celery_eager(), django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError):
        with transaction.atomic():
            instances_ingest(clinic=clinic, paths=[str(p) for p in paths], origin=Origin.system(source="upload"))
            raise RuntimeError("the caller's transaction fails after the ingest")

    assert not Instance.objects.for_clinic(clinic).exists()
    assert index_sidecar.sidecar_keys(clinic=clinic) == []


def test_sync_replication_writes_the_sidecar_after_the_commit(clinic, tmp_path, settings,
                                                               django_capture_on_commit_callbacks):
    settings.REPLICATION_MODE = "sync"

    instances = ingest_replicated(clinic, write_dicom_files(tmp_path / "in", count=3), django_capture_on_commit_callbacks)
    lose_the_database()
    report = recovery.index_rebuild(jobs=1)

    assert len(index_sidecar.sidecar_keys(clinic=clinic)) == 1
    assert (report.indexed, report.from_sidecars) == (3, 3)
    assert set(Instance.objects.for_clinic(clinic).values_list("uuid", flat=True)) == {i.uuid for i in instances}


def test_rebuild_from_sidecars_keeps_a_trashed_study_in_the_trash(clinic, archive, django_capture_on_commit_callbacks):
    study = archive[0].series.study
    with celery_eager(), django_capture_on_commit_callbacks(execute=True):
        deleted_at = browse_services.study_delete(clinic=clinic, study=study).deleted_at
    lose_the_database()

    report = recovery.index_rebuild(jobs=1)

    assert (report.from_sidecars, report.trashed_again) == (7, 1)
    assert Study.objects.for_clinic(clinic).get(study_instance_uid=study.study_instance_uid).deleted_at == deleted_at
    assert Study.objects.for_clinic(clinic).filter(deleted_at__isnull=True).count() == 2


def test_an_interrupted_sidecar_rebuild_resumes_with_the_rest(clinic, archive, monkeypatch):
    before = index_state(clinic)
    lose_the_database()
    monkeypatch.setattr(recovery, "SIDECAR_REBUILD_BATCH", 1)
    real_write = recovery.instances_index_create
    calls = []

    def killed_after_the_first_batch(**kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        real_write(**kwargs)

    monkeypatch.setattr(recovery, "instances_index_create", killed_after_the_first_batch)
    with pytest.raises(KeyboardInterrupt):
        recovery.index_rebuild(jobs=1)
    indexed_first = Instance.objects.for_clinic(clinic).count()
    monkeypatch.setattr(recovery, "instances_index_create", real_write)

    report = recovery.index_rebuild(jobs=1)

    assert indexed_first in (3, 4)  # the first sidecar's batch (of either size) is committed
    rest = 7 - indexed_first
    assert (report.indexed, report.already_indexed, report.from_sidecars, report.decoded) == (rest, indexed_first,
                                                                                              rest, 0)
    assert index_state(clinic) == before


def test_compaction_merges_small_sidecars_and_a_rebuild_still_reads_them(clinic, archive):
    before = index_state(clinic)

    done = index_sidecar.index_sidecars_compact(clinic=clinic)

    assert (done.sidecars_before, done.sidecars_written, done.sidecars_deleted) == (2, 1, 2)
    assert len(index_sidecar.sidecar_keys(clinic=clinic)) == 1
    lose_the_database()
    report = recovery.index_rebuild(jobs=1)
    assert (report.from_sidecars, report.decoded) == (7, 0)
    assert index_state(clinic) == before


def test_compaction_drops_a_purged_study_from_the_sidecars(clinic, archive, django_capture_on_commit_callbacks):
    purged = next(i for i in archive if i.series.study.patient.patient_id == "BK-2-0").series.study
    with celery_eager(), django_capture_on_commit_callbacks(execute=True):
        browse_services.study_delete(clinic=clinic, study=purged)
    browse_services.study_purge(clinic=clinic, study_id=purged.pk)

    done = index_sidecar.index_sidecars_compact(clinic=clinic)

    assert done.entries_dropped == 3
    clinic_keys = {row.key_id: keys.clinic_key_for_object(clinic=clinic, key_id=row.key_id)
                   for row in ClinicKey.objects.for_clinic(clinic)}
    left = [entry for key in index_sidecar.sidecar_keys(clinic=clinic)
            for entry in index_sidecar.index_sidecar_read(clinic=clinic, key=key, clinic_keys=clinic_keys)]
    assert sorted(e.parsed.sop_instance_uid for e in left) == sorted(
        i.sop_instance_uid for i in archive if i.series.study_id != purged.pk
    )
    assert all(e.parsed.patient_id != "BK-2-0" for e in left)


def test_compaction_leaves_an_unreadable_sidecar_and_a_current_large_one_alone(clinic, archive, settings):
    damaged, other = sidecar_files(settings, clinic)
    damaged.write_bytes(b"not a sidecar")

    done = index_sidecar.index_sidecars_compact(clinic=clinic, instances_per_sidecar=2)

    # The readable one (3 or 4 entries) is already "large" for 2 per sidecar; nothing to merge.
    assert (done.sidecars_written, done.sidecars_deleted) == (0, 0)
    assert sorted(sidecar_files(settings, clinic)) == sorted([damaged, other])


def test_a_sidecar_batch_refused_as_a_whole_is_indexed_one_by_one_with_its_headers(clinic, archive):
    conflicting = archive[-1].series.series_instance_uid
    headers = {i.sop_instance_uid: i.metadata for i in Instance.objects.for_clinic(clinic)}
    lose_the_database()
    # Left from elsewhere: the series of the second batch already filed under another study.
    Series.objects.create(clinic=clinic, study=make_study(clinic=clinic), series_instance_uid=conflicting)

    report = recovery.index_rebuild(jobs=1)

    assert (report.indexed, len(report.failed)) == (4, 3)
    rebuilt = {i.sop_instance_uid: i.metadata for i in Instance.objects.for_clinic(clinic)}
    assert rebuilt == {uid: header for uid, header in headers.items() if uid in rebuilt} and len(rebuilt) == 4


def test_rebuild_from_sidecars_on_an_s3_replica_with_worker_processes(clinic, s3_stores, tmp_path,
                                                                       django_capture_on_commit_callbacks):
    ingest_replicated(clinic, write_dicom_files(tmp_path / "a", count=4, studies=2), django_capture_on_commit_callbacks)
    ingest_replicated(clinic, write_dicom_files(tmp_path / "b", count=2, patient_id="S3"),
                      django_capture_on_commit_callbacks)
    before = index_state(clinic)
    # One sidecar lost: its instances are decoded by the worker processes.
    stores.get_store("replica").delete(index_sidecar.sidecar_keys(clinic=clinic)[0])
    lose_the_database()

    report = recovery.index_rebuild(jobs=2)

    assert report.from_sidecars in (2, 4) and report.from_sidecars + report.decoded == 6 and report.failed == []
    assert index_state(clinic) == before

"""Failover and repair, restore from the replica, rebuilding the index from the replica, offline export."""

from __future__ import annotations

import shutil

import pytest
from django.core.management import CommandError, call_command
from pydicom import dcmread
from pydicom.fileset import FileSet

from studies.archive import objects, stores
from studies.backup import recovery, replication
from studies.models import ClinicKey, Instance, Patient, Series, Study
from tests.dicom_files import write_dicom_files
from tests.factories import ingest_files
from tests.studies.backup_support import (
    backup_cache_clear,  # noqa: F401 - autouse
    celery_eager,
    local_path,
    stored_bytes,
)


def _replicated(clinic, folder, count=3, studies=1):
    paths = write_dicom_files(folder, count=count, studies=studies)
    instances = ingest_files(clinic=clinic, paths=paths)
    for instance in instances:
        replication.instance_replicate(instance=instance)
    return paths, instances


def _damage(settings, key: str) -> None:
    path = local_path(settings.PRIMARY_STORE_URL, key)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_primary_is_served_from_replica_and_repaired(clinic, tmp_path, settings):
    paths, instances = _replicated(clinic, tmp_path, count=1)
    key = instances[0].object_key
    _damage(settings, key)

    with celery_eager():
        with objects.object_open(clinic=clinic, key=key) as stream:
            served = stream.read()

    assert served == paths[0].read_bytes()  # the user got the original bytes
    # The repair task (queued by the failover hook) rewrote primary from the replica.
    assert stored_bytes("primary", key) == stored_bytes("replica", key)
    assert recovery.object_repair(clinic=clinic, key=key) == "healthy"


def test_missing_primary_object_is_repaired(clinic, tmp_path, settings):
    _, instances = _replicated(clinic, tmp_path, count=1)
    key = instances[0].object_key
    local_path(settings.PRIMARY_STORE_URL, key).unlink()
    assert recovery.object_repair(clinic=clinic, key=key) == "repaired"
    assert stored_bytes("primary", key) == stored_bytes("replica", key)


def test_repair_never_copies_a_bad_replica_over_primary(clinic, tmp_path, settings):
    _, instances = _replicated(clinic, tmp_path, count=1)
    key = instances[0].object_key
    _damage(settings, key)
    replica_file = local_path(settings.REPLICA_STORE_URL, key)
    replica_file.write_bytes(replica_file.read_bytes()[:-20])  # truncated
    before = local_path(settings.PRIMARY_STORE_URL, key).read_bytes()
    assert recovery.object_repair(clinic=clinic, key=key) == "unrecoverable"
    assert local_path(settings.PRIMARY_STORE_URL, key).read_bytes() == before


def test_restore_command_rewrites_primary_and_is_resumable(clinic, tmp_path, settings, capsys):
    _, instances = _replicated(clinic, tmp_path, count=4)
    # Lose part of primary: two objects, one damaged, and the clinic key document.
    local_path(settings.PRIMARY_STORE_URL, instances[0].object_key).unlink()
    local_path(settings.PRIMARY_STORE_URL, instances[1].object_key).unlink()
    _damage(settings, instances[2].object_key)
    key_id = ClinicKey.objects.for_clinic(clinic).get().key_id
    local_path(settings.PRIMARY_STORE_URL, f"clinics/{clinic.uuid}/keys/{key_id}").unlink()

    call_command("restore", "--clinic", clinic.slug)
    out = capsys.readouterr().out
    assert "4 checked, 1 already good, 3 restored, 0 unrecoverable" in out
    for instance in instances:
        assert stored_bytes("primary", instance.object_key) == stored_bytes("replica", instance.object_key)
    assert stores.get_store("primary").exists(f"clinics/{clinic.uuid}/keys/{key_id}")

    call_command("restore", "--all")
    assert "4 checked, 4 already good, 0 restored" in capsys.readouterr().out


def test_restore_reports_what_cannot_be_restored(clinic, tmp_path, settings):
    _, instances = _replicated(clinic, tmp_path, count=1)
    local_path(settings.PRIMARY_STORE_URL, instances[0].object_key).unlink()
    local_path(settings.REPLICA_STORE_URL, instances[0].object_key).unlink()
    with pytest.raises(CommandError, match="1 objects could not be restored"):
        call_command("restore", "--clinic", clinic.slug)


def _index_snapshot(clinic) -> dict[str, tuple]:
    return {
        i.sop_instance_uid: (
            i.object_key, i.sha256, i.size_bytes, i.series.series_instance_uid, i.series.study.study_instance_uid,
            i.series.study.patient.patient_id, i.metadata, i.transfer_syntax_uid,
        )
        for i in Instance.objects.for_clinic(clinic).select_related("series__study__patient")
    }


def test_rebuild_index_from_the_replica_alone(clinic, other_clinic, tmp_path, settings, capsys):
    paths, _ = _replicated(clinic, tmp_path / "a", count=5, studies=2)
    _replicated(other_clinic, tmp_path / "b", count=2)
    before = {c.pk: _index_snapshot(c) for c in (clinic, other_clinic)}
    studies_before = sorted(Study.objects.for_clinic(clinic).values_list("study_instance_uid", "number_of_instances"))
    used_before = type(clinic).objects.get(pk=clinic.pk).used_bytes
    # The database index and the clinic keys are lost; primary storage too.
    Instance.objects.all().delete()
    Series.objects.all().delete()
    Study.objects.all().delete()
    Patient.objects.all().delete()
    ClinicKey.objects.all().delete()
    type(clinic).objects.update(used_bytes=0)
    shutil.rmtree(local_path(settings.PRIMARY_STORE_URL, ""))
    from studies.archive import keys

    keys.key_cache_clear()

    call_command("rebuild_index")
    out = capsys.readouterr().out
    assert "7 indexed" in out and "0 failed" in out

    for c in (clinic, other_clinic):
        assert _index_snapshot(c) == before[c.pk]
    assert sorted(Study.objects.for_clinic(clinic).values_list("study_instance_uid", "number_of_instances")) \
        == studies_before
    assert type(clinic).objects.get(pk=clinic.pk).used_bytes == used_before
    # Resumable: a second run indexes nothing new.
    call_command("rebuild_index")
    assert "0 indexed, 7 already indexed" in capsys.readouterr().out
    # And restore brings primary back: same bytes as the uploaded files.
    call_command("restore", "--all")
    by_uid = {dcmread(p).SOPInstanceUID: p.read_bytes() for p in paths}
    for instance in Instance.objects.for_clinic(clinic):
        with objects.object_open(clinic=clinic, key=instance.object_key) as stream:
            assert stream.read() == by_uid[instance.sop_instance_uid]


def test_rebuild_index_in_worker_processes(clinic, tmp_path):
    _, instances = _replicated(clinic, tmp_path, count=6, studies=2)
    before = _index_snapshot(clinic)
    Instance.objects.all().delete()
    Series.objects.all().delete()
    Study.objects.all().delete()
    report = recovery.index_rebuild(jobs=2)
    assert (report.indexed, report.failed) == (6, [])
    assert _index_snapshot(clinic) == before


def test_an_interrupted_rebuild_keeps_its_committed_batches_and_the_next_run_does_the_rest(clinic, tmp_path, monkeypatch):
    _, instances = _replicated(clinic, tmp_path, count=6, studies=2)
    before = _index_snapshot(clinic)
    used_before = type(clinic).objects.get(pk=clinic.pk).used_bytes
    Instance.objects.all().delete()
    Series.objects.all().delete()
    Study.objects.all().delete()
    type(clinic).objects.update(used_bytes=0)
    monkeypatch.setattr(recovery, "REBUILD_BATCH", 2)
    real_write = recovery.instances_index_create
    calls = []

    def killed_after_the_first_batch(**kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt  # the operator's Ctrl-C, or the process dying, mid-run
        real_write(**kwargs)

    monkeypatch.setattr(recovery, "instances_index_create", killed_after_the_first_batch)
    with pytest.raises(KeyboardInterrupt):
        recovery.index_rebuild(jobs=1)
    assert Instance.objects.for_clinic(clinic).count() == 2  # the first batch is committed

    monkeypatch.setattr(recovery, "instances_index_create", real_write)
    report = recovery.index_rebuild(jobs=1)

    assert (report.indexed, report.already_indexed, report.failed) == (4, 2, [])
    assert _index_snapshot(clinic) == before
    assert type(clinic).objects.get(pk=clinic.pk).used_bytes == used_before


def test_rebuild_index_recreates_a_lost_clinic_from_its_manifest(db):
    import uuid

    from django.utils import timezone

    from tenants.models import Clinic

    # A clinic whose row is gone: only its manifest on the replica is left.
    gone = Clinic(uuid=uuid.uuid4(), name="Lost Clinic", slug="lost-clinic", ae_title="LOSTCLINIC",
                  quota_bytes=123, created_at=timezone.now())
    replication.clinic_manifest_replicate(clinic=gone, force=True)
    manifest = stored_bytes("replica", f"clinics/{gone.uuid}/clinic.json")
    assert b"patient" not in manifest.lower()

    assert recovery.replica_clinic_uuids() == [gone.uuid]
    recreated, created = recovery.clinic_recover(clinic_uuid=gone.uuid)
    assert created
    assert (recreated.uuid, recreated.name, recreated.slug, recreated.ae_title, recreated.quota_bytes) == (
        gone.uuid, "Lost Clinic", "lost-clinic", "LOSTCLINIC", 123
    )
    assert recovery.clinic_recover(clinic_uuid=gone.uuid) == (recreated, False)


def test_export_clinic_writes_dicom_files_and_a_dicomdir(clinic, tmp_path, capsys):
    paths, _ = _replicated(clinic, tmp_path / "in", count=4, studies=2)
    target = tmp_path / "export"
    call_command("export_clinic", "--clinic", clinic.slug, "--to", str(target))
    assert "Exported 4 instances of 2 studies" in capsys.readouterr().out

    fileset = FileSet(dcmread(target / "DICOMDIR"))
    assert len(fileset) == 4
    assert len(fileset.find_values("StudyInstanceUID")) == 2
    originals = {dcmread(p).SOPInstanceUID: dcmread(p) for p in paths}
    for instance in fileset:
        exported = instance.load()
        original = originals[exported.SOPInstanceUID]
        assert exported.PixelData == original.PixelData
        assert exported.PatientID == original.PatientID
    with pytest.raises(CommandError, match="not empty"):
        call_command("export_clinic", "--clinic", clinic.slug, "--to", str(target))

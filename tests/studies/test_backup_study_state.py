"""Trash and purge state in the backup store: a rebuild from the replica never resurrects a study."""

from __future__ import annotations

from pathlib import Path

import pytest

from studies.backup import recovery, replication, study_state
from studies.browse import services
from studies.models import Instance, Patient, Series, Study
from tests.dicom_files import write_dicom_files
from tests.factories import ingest_files
from tests.studies.backup_support import (
    backup_cache_clear,  # noqa: F401 - autouse
    celery_eager,
    local_path,
)


@pytest.fixture
def two_studies(clinic, tmp_path) -> tuple[Study, Study]:
    instances = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path / "in", count=4, studies=2))
    for instance in instances:
        replication.instance_replicate(instance=instance)
    first, second = sorted({i.series.study_id for i in instances})
    return Study.objects.get(pk=first), Study.objects.get(pk=second)


def lose_the_index(clinic) -> None:
    """The database is gone: what rebuild_index starts from (clinic and keys kept to keep the test short)."""
    Instance.objects.for_clinic(clinic).delete()
    Series.objects.for_clinic(clinic).delete()
    Study.objects.for_clinic(clinic).delete()
    Patient.objects.for_clinic(clinic).delete()


def trash(clinic, study, django_capture_on_commit_callbacks) -> Study:
    with celery_eager(), django_capture_on_commit_callbacks(execute=True):
        return services.study_delete(clinic=clinic, study=study)


def test_trashed_study_is_back_in_the_trash_after_a_rebuild(clinic, two_studies, django_capture_on_commit_callbacks):
    trashed, live = two_studies
    deleted_at = trash(clinic, trashed, django_capture_on_commit_callbacks).deleted_at
    lose_the_index(clinic)

    report = recovery.index_rebuild(clinic_uuids=[clinic.uuid])

    assert report.indexed == 4 and report.trashed_again == 1
    rebuilt = Study.objects.for_clinic(clinic).get(study_instance_uid=trashed.study_instance_uid)
    assert rebuilt.deleted_at == deleted_at
    assert Study.objects.for_clinic(clinic).get(study_instance_uid=live.study_instance_uid).deleted_at is None


def test_study_restored_from_the_trash_stays_live_after_a_rebuild(clinic, two_studies,
                                                                  django_capture_on_commit_callbacks):
    study, _ = two_studies
    trash(clinic, study, django_capture_on_commit_callbacks)
    with celery_eager(), django_capture_on_commit_callbacks(execute=True):
        services.study_restore(clinic=clinic, study=study)
    lose_the_index(clinic)

    recovery.index_rebuild(clinic_uuids=[clinic.uuid])

    assert Study.objects.for_clinic(clinic).get(study_instance_uid=study.study_instance_uid).deleted_at is None


def test_purged_study_is_not_indexed_again_from_old_replica_copies(clinic, settings, two_studies,
                                                                   django_capture_on_commit_callbacks):
    purged, live = two_studies
    keys = list(Instance.objects.for_clinic(clinic).filter(series__study=purged).values_list("object_key", flat=True))
    old_copies = {key: local_path(settings.REPLICA_STORE_URL, key).read_bytes() for key in keys}
    trash(clinic, purged, django_capture_on_commit_callbacks)
    services.study_purge(clinic=clinic, study_id=purged.pk)
    # The replica still serves the old copies (a versioned bucket's earlier versions brought back).
    for key, data in old_copies.items():
        Path(local_path(settings.REPLICA_STORE_URL, key)).write_bytes(data)
    lose_the_index(clinic)

    recovery.index_rebuild(clinic_uuids=[clinic.uuid])

    assert list(Study.objects.for_clinic(clinic).values_list("study_instance_uid", flat=True)) == [
        live.study_instance_uid
    ]
    assert not Instance.objects.for_clinic(clinic).filter(object_key__in=keys).exists()


def test_applying_the_states_twice_changes_nothing_more(clinic, two_studies, django_capture_on_commit_callbacks):
    study, _ = two_studies
    trash(clinic, study, django_capture_on_commit_callbacks)
    Study.objects.filter(pk=study.pk).update(deleted_at=None)

    first = study_state.study_states_apply(clinic=clinic)
    second = study_state.study_states_apply(clinic=clinic)

    assert (first.trashed, second.trashed) == (1, 0)


def test_sweep_publishes_the_state_a_lost_message_never_wrote(clinic, other_clinic, two_studies):
    study, _ = two_studies
    services.study_delete(clinic=clinic, study=study)  # on_commit never runs: the message is lost

    assert study_state.study_states_sweep() == 1
    assert study_state.study_states_sweep() == 0
    assert [s.state for s in study_state.study_states_read(clinic=clinic)] == ["trashed"]
    assert study_state.study_states_read(clinic=other_clinic) == []


def test_state_document_in_the_replica_is_encrypted(clinic, settings, two_studies, django_capture_on_commit_callbacks):
    study, _ = two_studies
    trash(clinic, study, django_capture_on_commit_callbacks)

    stored = local_path(settings.REPLICA_STORE_URL, study_state.study_state_key(clinic=clinic, study_uuid=study.uuid))

    assert study.study_instance_uid.encode() not in stored.read_bytes()

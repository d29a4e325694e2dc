"""Delete to the trash, restore, and the purge that erases objects from both stores and frees the quota."""

from __future__ import annotations

from datetime import timedelta
from http import HTTPStatus

import pytest
from django.utils import timezone

from studies.archive import stores
from studies.browse import services, tasks
from studies.models import Instance, Patient, Series, Study
from tenants.models import AuditEvent, Clinic
from tests.dicom_files import write_series
from tests.factories import ingest_files, make_study


@pytest.fixture
def stored(clinic, tmp_path):
    """A stored study of 3 instances, each also copied (still encrypted) to the replica."""
    instances = ingest_files(clinic=clinic, paths=write_series(tmp_path / "s", count=3))
    primary, replica = stores.get_store("primary"), stores.get_store("replica")
    for instance in instances:
        with primary.open(instance.object_key) as source:
            replica.put(instance.object_key, source)
    return Study.objects.get(pk=instances[0].series.study_id)


def delete_url(study):
    return f"/c/{study.clinic.slug}/studies/{study.uuid}/delete/"


def restore_url(study):
    return f"/c/{study.clinic.slug}/studies/{study.uuid}/restore/"


def trash_url(clinic):
    return f"/c/{clinic.slug}/studies/trash/"


def age_in_trash(study, days):
    Study.objects.filter(pk=study.pk).update(deleted_at=timezone.now() - timedelta(days=days))


def test_admin_moves_a_study_to_the_trash(client, admin, clinic):
    study = make_study(clinic=clinic)
    client.force_login(admin)

    response = client.post(delete_url(study))

    assert response.status_code == HTTPStatus.FOUND
    study.refresh_from_db()
    assert study.deleted_at is not None and study.deleted_by == admin
    assert AuditEvent.objects.get(action="study.deleted").object_id == str(study.uuid)
    listing = client.get(f"/c/{clinic.slug}/studies/")
    assert study not in listing.context["page"].object_list
    assert study in client.get(trash_url(clinic)).context["page"].object_list


def test_clinician_cannot_delete_or_see_the_trash(client, clinician, clinic):
    study = make_study(clinic=clinic)
    client.force_login(clinician)

    assert client.post(delete_url(study)).status_code == HTTPStatus.FORBIDDEN
    assert client.get(trash_url(clinic)).status_code == HTTPStatus.FORBIDDEN
    assert Study.objects.get(pk=study.pk).deleted_at is None


def test_delete_needs_post(client, owner, clinic):
    study = make_study(clinic=clinic)
    client.force_login(owner)

    assert client.get(delete_url(study)).status_code == HTTPStatus.METHOD_NOT_ALLOWED
    assert Study.objects.get(pk=study.pk).deleted_at is None


def test_owner_restores_a_study_from_the_trash(client, owner, clinic):
    study = make_study(clinic=clinic)
    services.study_delete(clinic=clinic, study=study, actor=owner)
    client.force_login(owner)

    response = client.post(restore_url(study))

    assert response.status_code == HTTPStatus.FOUND
    assert Study.objects.get(pk=study.pk).deleted_at is None
    assert AuditEvent.objects.filter(action="study.restored", object_id=str(study.uuid)).exists()


def test_outsider_gets_404_on_delete_restore_and_trash(client, outsider, clinic):
    live = make_study(clinic=clinic)
    trashed = make_study(clinic=clinic)
    Study.objects.filter(pk=trashed.pk).update(deleted_at=timezone.now())
    client.force_login(outsider)

    assert client.post(delete_url(live)).status_code == HTTPStatus.NOT_FOUND
    assert client.post(restore_url(trashed)).status_code == HTTPStatus.NOT_FOUND
    assert client.get(trash_url(clinic)).status_code == HTTPStatus.NOT_FOUND
    assert Study.objects.get(pk=live.pk).deleted_at is None
    assert Study.objects.get(pk=trashed.pk).deleted_at is not None


def test_another_clinics_study_cannot_be_deleted_from_mine(client, outsider, other_clinic, clinic):
    foreign = make_study(clinic=clinic)
    client.force_login(outsider)

    response = client.post(f"/c/{other_clinic.slug}/studies/{foreign.uuid}/delete/")

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert Study.objects.get(pk=foreign.pk).deleted_at is None


@pytest.fixture
def eager_tasks():
    """Run queued tasks inline, as a worker would, instead of sending them to the broker."""
    conf = tasks.study_purge.app.conf
    previous = conf.task_always_eager
    conf.task_always_eager = True
    yield
    conf.task_always_eager = previous


def test_purge_erases_objects_in_both_stores_rows_and_frees_the_quota(clinic, owner, stored, eager_tasks):
    keys = list(Instance.objects.filter(series__study=stored).values_list("object_key", flat=True))
    used_before = Clinic.objects.get(pk=clinic.pk).used_bytes
    size = stored.size_bytes
    services.study_delete(clinic=clinic, study=stored, actor=owner)
    age_in_trash(stored, 31)

    queued = tasks.studies_trash_purge.apply().get()

    assert queued == 1
    primary, replica = stores.get_store("primary"), stores.get_store("replica")
    assert not any(primary.exists(key) or replica.exists(key) for key in keys)
    assert not Study.objects.filter(pk=stored.pk).exists()
    assert not Instance.objects.filter(object_key__in=keys).exists()
    assert not Series.objects.filter(study_id=stored.pk).exists()
    assert not Patient.objects.for_clinic(clinic).exists()
    assert Clinic.objects.get(pk=clinic.pk).used_bytes == used_before - size
    assert AuditEvent.objects.get(action="study.purged").details["freed_bytes"] == size


def test_purge_runs_safely_twice(clinic, owner, stored):
    services.study_delete(clinic=clinic, study=stored, actor=owner)
    age_in_trash(stored, 31)
    used = Clinic.objects.get(pk=clinic.pk).used_bytes

    assert services.study_purge(clinic=clinic, study_id=stored.pk) is True
    assert services.study_purge(clinic=clinic, study_id=stored.pk) is False

    assert Clinic.objects.get(pk=clinic.pk).used_bytes == used - stored.size_bytes
    assert AuditEvent.objects.filter(action="study.purged").count() == 1


def test_purge_finishes_after_an_interrupted_run(clinic, owner, stored):
    services.study_delete(clinic=clinic, study=stored, actor=owner)
    first = Instance.objects.filter(series__study=stored).first()
    stores.get_store("primary").delete(first.object_key)  # a previous run got this far

    assert services.study_purge(clinic=clinic, study_id=stored.pk) is True
    assert not Study.objects.filter(pk=stored.pk).exists()


def test_periodic_purge_leaves_recent_trash_and_live_studies(clinic, owner, stored, settings):
    settings.TRASH_DAYS = 30
    services.study_delete(clinic=clinic, study=stored, actor=owner)
    age_in_trash(stored, 29)
    live = make_study(clinic=clinic)

    assert tasks.studies_trash_purge.apply().get() == 0
    assert services.study_purge(clinic=clinic, study_id=live.pk) is False

    assert Study.objects.filter(pk__in=[stored.pk, live.pk]).count() == 2
    assert all(stores.get_store("primary").exists(i.object_key) for i in Instance.objects.for_clinic(clinic))


def test_purge_of_a_restored_study_does_nothing(clinic, owner, stored):
    services.study_delete(clinic=clinic, study=stored, actor=owner)
    services.study_restore(clinic=clinic, study=stored, actor=owner)

    assert services.study_purge(clinic=clinic, study_id=stored.pk) is False
    assert Study.objects.filter(pk=stored.pk, deleted_at=None).exists()


def test_purge_keeps_a_patient_who_has_other_studies(clinic, owner):
    first = make_study(clinic=clinic, patient_id="KEEP")
    make_study(clinic=clinic, patient_id="KEEP")
    services.study_delete(clinic=clinic, study=first, actor=owner)

    services.study_purge(clinic=clinic, study_id=first.pk)

    assert Patient.objects.for_clinic(clinic).filter(patient_id="KEEP").exists()


def test_purge_on_s3_deletes_both_copies(clinic, owner, s3_stores, tmp_path):
    instances = ingest_files(clinic=clinic, paths=write_series(tmp_path / "s3", count=2))
    primary, replica = stores.get_store("primary"), stores.get_store("replica")
    for instance in instances:
        with primary.open(instance.object_key) as source:
            replica.put(instance.object_key, source)
    study = Study.objects.get(pk=instances[0].series.study_id)
    services.study_delete(clinic=clinic, study=study, actor=owner)

    services.study_purge(clinic=clinic, study_id=study.pk)

    assert not any(primary.exists(i.object_key) or replica.exists(i.object_key) for i in instances)
    assert Clinic.objects.get(pk=clinic.pk).used_bytes == 0

"""Deletion, trash and purge seen from outside: who may, what a share link still shows, exact numbers."""

from __future__ import annotations

from datetime import timedelta
from http import HTTPStatus

import pytest

from studies.archive import stores
from studies.browse import services
from studies.models import Instance, Study
from studies.sharing import services as sharing
from tests.dicom_files import write_series
from tests.factories import ingest_files


@pytest.fixture
def two_stored(clinic, tmp_path):
    first = ingest_files(clinic=clinic, paths=write_series(tmp_path / "a", count=2))[0].series.study
    second = ingest_files(clinic=clinic, paths=write_series(tmp_path / "b", count=3))[0].series.study
    for instance in Instance.objects.for_clinic(clinic):
        with stores.get_store("primary").open(instance.object_key) as source:
            stores.get_store("replica").put(instance.object_key, source)
    Instance.objects.for_clinic(clinic).update(replicated_at="2026-01-01T00:00:00Z")
    return Study.objects.get(pk=first.pk), Study.objects.get(pk=second.pk)


def _api(clinic, suffix: str) -> str:
    return f"/api/v1/clinics/{clinic.slug}/{suffix}"


@pytest.mark.parametrize("who", ["clinician", "uploader", "billing_admin"])
def test_only_owners_and_admins_delete_or_restore(client, clinic, owner, two_stored, who, request):
    study, _ = two_stored
    client.force_login(request.getfixturevalue(who))

    api = client.delete(_api(clinic, f"studies/{study.study_instance_uid}/"))
    page = client.post(f"/c/{clinic.slug}/studies/{study.uuid}/delete/")
    services.study_delete(clinic=clinic, study=study, actor=owner)
    restore = client.post(f"/c/{clinic.slug}/studies/{study.uuid}/restore/")

    assert api.status_code == HTTPStatus.FORBIDDEN
    assert page.status_code in {HTTPStatus.FORBIDDEN, HTTPStatus.NOT_FOUND}
    assert restore.status_code in {HTTPStatus.FORBIDDEN, HTTPStatus.NOT_FOUND}
    assert Study.objects.get(pk=study.pk).deleted_at is not None


def test_a_share_link_stops_showing_a_trashed_study(client, clinic, owner, two_stored):
    study, _ = two_stored
    new = sharing.share_create(clinic=clinic, studies=[study], created_by=owner)

    before = client.get(f"/s/{new.token}/dicomweb/studies", HTTP_ACCEPT="application/dicom+json")
    services.study_delete(clinic=clinic, study=study, actor=owner)
    after = client.get(f"/s/{new.token}/dicomweb/studies", HTTP_ACCEPT="application/dicom+json")
    wado = client.get(f"/s/{new.token}/dicomweb/studies/{study.study_instance_uid}/metadata",
                      HTTP_ACCEPT="application/dicom+json")

    assert before.status_code == HTTPStatus.OK and len(before.json()) == 1
    assert after.status_code in {HTTPStatus.OK, HTTPStatus.NO_CONTENT}
    assert after.status_code == HTTPStatus.NO_CONTENT or after.json() == []
    assert wado.status_code == HTTPStatus.NOT_FOUND


def test_usage_and_backup_numbers_are_exact_after_trash_and_purge(client, clinic, owner, two_stored):
    first, second = two_stored
    client.force_login(owner)
    usage0 = client.get(_api(clinic, "usage/")).json()
    backup0 = client.get(_api(clinic, "backup/")).json()
    second_keys = list(Instance.objects.filter(series__study=second).values_list("object_key", flat=True))

    services.study_delete(clinic=clinic, study=first, actor=owner)
    trashed = client.get(_api(clinic, "usage/")).json()
    Study.objects.filter(pk=first.pk).update(deleted_at=first.created_at - timedelta(days=40))
    assert services.study_purge(clinic=clinic, study_id=first.pk) is True
    usage1 = client.get(_api(clinic, "usage/")).json()
    backup1 = client.get(_api(clinic, "backup/")).json()

    # In the trash it is still stored (and restorable), so it still counts; purged, it is gone exactly.
    assert trashed["used_bytes"] == usage0["used_bytes"]
    assert usage1["used_bytes"] == usage0["used_bytes"] - first.size_bytes == second.size_bytes
    assert (backup0["instances"], backup1["instances"]) == (5, 3)
    assert (backup1["replicated"], backup1["pending"]) == (3, 0)
    assert all(stores.get_store(name).exists(key) for key in second_keys for name in ("primary", "replica"))


def test_an_interrupted_purge_resumes_and_leaves_the_other_study_whole(clinic, owner, two_stored, monkeypatch):
    first, second = two_stored
    second_keys = list(Instance.objects.filter(series__study=second).values_list("object_key", flat=True))
    services.study_delete(clinic=clinic, study=first, actor=owner)
    real = services._delete_object
    calls = []

    def killed_after_one(**kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the worker dies between two deletes
        return real(**kwargs)

    monkeypatch.setattr(services, "_delete_object", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        services.study_purge(clinic=clinic, study_id=first.pk)
    monkeypatch.setattr(services, "_delete_object", real)

    with pytest.raises(Exception, match="can no longer be restored"):
        services.study_restore(clinic=clinic, study=Study.objects.get(pk=first.pk), actor=owner)
    assert services.study_purge(clinic=clinic, study_id=first.pk) is True

    assert not Study.objects.filter(pk=first.pk).exists()
    assert all(stores.get_store(name).exists(key) for key in second_keys for name in ("primary", "replica"))
    assert Study.objects.get(pk=second.pk).deleted_at is None

"""An outside review of the quarantine: who may see and decide held instances, what they leak, and what filing
and discarding leave behind (stores, quota, index, thumbnails).
"""

from __future__ import annotations

import uuid
from http import HTTPStatus

import pytest
from django.test import Client

from studies.archive import stores
from studies.browse import services as browse_services
from studies.errors import PatientMismatch
from studies.ingest import instance_ingest
from studies.models import Instance, QuarantinedInstance, Series, Study
from studies.quarantine import tasks as quarantine_tasks
from tenants.models import AuditEvent, Clinic
from tests.dicom_files import write_ct
from tests.factories import ingest_files, token_for
from tests.studies.backup_support import celery_eager


@pytest.fixture
def first_patient_study(clinic, tmp_path):
    ingest_files(clinic=clinic, paths=[write_ct(tmp_path / "a.dcm", patient_id="PAT-A", patient_name="Alpha^Ann")])
    return Study.objects.for_clinic(clinic).get()


def hold(clinic, tmp_path, study, *, name="b.dcm", patient_id="PAT-B", patient_name="Beta^Bob"):
    path = write_ct(tmp_path / name, study_uid=study.study_instance_uid, patient_id=patient_id,
                    patient_name=patient_name)
    with pytest.raises(PatientMismatch):
        instance_ingest(clinic=clinic, source_path=str(path))
    return QuarantinedInstance.objects.for_clinic(clinic).filter(resolved_at__isnull=True).latest("received_at")


def resolve(client, clinic, held, action):
    return client.post(f"/c/{clinic.slug}/studies/quarantine/{held.uuid}/", {"action": action}, follow=True)


def used(clinic) -> int:
    return Clinic.objects.get(pk=clinic.pk).used_bytes


# --- isolation ---------------------------------------------------------------------------------------


def test_another_clinics_owner_can_not_decide_a_held_instance_through_their_own_clinic(
    client, clinic, other_clinic, outsider, first_patient_study, tmp_path
):
    held = hold(clinic, tmp_path, first_patient_study)
    client.force_login(outsider)

    answer = client.post(f"/c/{other_clinic.slug}/studies/quarantine/{held.uuid}/", {"action": "discard"})
    page = client.get(f"/c/{other_clinic.slug}/studies/quarantine/").content.decode()

    assert answer.status_code == HTTPStatus.NOT_FOUND
    assert "Beta" not in page and "PAT-B" not in page
    assert QuarantinedInstance.objects.get().resolved_at is None
    assert stores.get_store("primary").exists(held.object_key)


def test_uploader_may_neither_list_nor_decide(client, clinic, uploader, first_patient_study, tmp_path):
    held = hold(clinic, tmp_path, first_patient_study)
    client.force_login(uploader)

    page = client.get(f"/c/{clinic.slug}/studies/quarantine/")
    answer = client.post(f"/c/{clinic.slug}/studies/quarantine/{held.uuid}/", {"action": "file"})

    assert page.status_code == answer.status_code == HTTPStatus.FORBIDDEN
    assert QuarantinedInstance.objects.get().resolved_at is None


def test_a_member_who_may_not_decide_can_not_tell_a_held_id_from_an_unknown_one(
    client, clinic, clinician, first_patient_study, tmp_path
):
    held = hold(clinic, tmp_path, first_patient_study)
    client.force_login(clinician)

    known = client.post(f"/c/{clinic.slug}/studies/quarantine/{held.uuid}/", {"action": "discard"})
    unknown = client.post(f"/c/{clinic.slug}/studies/quarantine/{uuid.uuid4()}/", {"action": "discard"})

    assert known.status_code == unknown.status_code == HTTPStatus.FORBIDDEN
    assert QuarantinedInstance.objects.get().resolved_at is None


def test_a_decision_without_the_csrf_token_is_refused(clinic, owner, first_patient_study, tmp_path):
    held = hold(clinic, tmp_path, first_patient_study)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)

    answer = browser.post(f"/c/{clinic.slug}/studies/quarantine/{held.uuid}/", {"action": "discard"})

    assert answer.status_code == HTTPStatus.FORBIDDEN
    assert QuarantinedInstance.objects.get().resolved_at is None


def test_a_held_instance_is_not_found_by_search_qido_or_wado(client, clinic, owner, first_patient_study, tmp_path):
    held = hold(clinic, tmp_path, first_patient_study)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token_for(clinic, role='admin')}"}
    uid = first_patient_study.study_instance_uid
    client.force_login(owner)

    search = client.get(f"/c/{clinic.slug}/studies/", {"patient_id": "PAT-B"}).content.decode()
    qido = client.get(f"/dicomweb/{clinic.slug}/studies/{uid}/instances", **auth)
    wado = client.get(
        f"/dicomweb/{clinic.slug}/studies/{uid}/series/{held.series_instance_uid}/instances/{held.sop_instance_uid}",
        **auth,
    )

    assert "Beta" not in search
    assert held.sop_instance_uid not in qido.content.decode()
    assert wado.status_code == HTTPStatus.NOT_FOUND
    assert Study.objects.get(pk=first_patient_study.pk).number_of_instances == 1


# --- filing ------------------------------------------------------------------------------------------


def test_filing_twice_files_once_and_keeps_the_quota_as_it_was(client, clinic, owner, first_patient_study, tmp_path):
    held = hold(clinic, tmp_path, first_patient_study)
    before = used(clinic)
    client.force_login(owner)

    resolve(client, clinic, held, "file")
    again = resolve(client, clinic, held, "file")
    discard = client.post(f"/c/{clinic.slug}/studies/quarantine/{held.uuid}/", {"action": "discard"})

    assert again.status_code == discard.status_code == HTTPStatus.NOT_FOUND
    assert Instance.objects.for_clinic(clinic).filter(sop_instance_uid=held.sop_instance_uid).count() == 1
    assert used(clinic) == before
    assert Study.objects.get(pk=first_patient_study.pk).number_of_instances == 2
    assert AuditEvent.objects.filter(action="quarantine.filed").count() == 1
    assert stores.get_store("primary").exists(held.object_key)


def test_a_filed_instance_of_a_new_series_gets_its_thumbnail(
    client, clinic, owner, first_patient_study, tmp_path, django_capture_on_commit_callbacks
):
    held = hold(clinic, tmp_path, first_patient_study)
    client.force_login(owner)

    with celery_eager(), django_capture_on_commit_callbacks(execute=True):
        resolve(client, clinic, held, "file")

    series = Series.objects.for_clinic(clinic).get(series_instance_uid=held.series_instance_uid)
    assert series.thumbnail_key
    assert stores.get_store("primary").exists(series.thumbnail_key)


def test_filing_into_a_study_now_of_another_patient_than_shown_is_refused_until_seen(
    client, clinic, owner, first_patient_study, tmp_path
):
    # Held against Alpha's study; that study is then purged and the UID comes back as Carol's study.
    held = hold(clinic, tmp_path, first_patient_study)
    browse_services.study_delete(clinic=clinic, study=first_patient_study, actor=owner)
    browse_services.study_purge(clinic=clinic, study_id=first_patient_study.pk)
    ingest_files(clinic=clinic, paths=[write_ct(tmp_path / "c.dcm", study_uid=first_patient_study.study_instance_uid,
                                                patient_id="PAT-C", patient_name="Gamma^Carol")])
    carol = Study.objects.for_clinic(clinic).get()
    client.force_login(owner)

    refused = resolve(client, clinic, held, "file").content.decode()

    assert "another patient" in refused
    assert not Instance.objects.for_clinic(clinic).filter(object_key=held.object_key).exists()
    # The page now shows the study it would join, so the owner decides on what it really is.
    assert QuarantinedInstance.objects.get().study == carol
    assert "Gamma" in client.get(f"/c/{clinic.slug}/studies/quarantine/").content.decode()

    resolve(client, clinic, held, "file")

    assert Instance.objects.for_clinic(clinic).get(object_key=held.object_key).series.study == carol


# --- discarding --------------------------------------------------------------------------------------


def test_discard_erases_both_copies_frees_the_quota_once_and_is_audited(
    client, clinic, owner, first_patient_study, tmp_path, django_capture_on_commit_callbacks
):
    before = used(clinic)
    held = hold(clinic, tmp_path, first_patient_study)
    quarantine_tasks.quarantined_replicate(clinic_id=clinic.pk, held_id=held.pk)
    assert stores.get_store("replica").exists(held.object_key)
    client.force_login(owner)

    with celery_eager(), django_capture_on_commit_callbacks(execute=True):
        resolve(client, clinic, held, "discard")
        again = client.post(f"/c/{clinic.slug}/studies/quarantine/{held.uuid}/", {"action": "discard"})

    assert again.status_code == HTTPStatus.NOT_FOUND
    assert not stores.get_store("primary").exists(held.object_key)
    assert not stores.get_store("replica").exists(held.object_key)
    assert used(clinic) == before
    assert AuditEvent.objects.filter(action="quarantine.discarded", object_id=str(held.uuid)).count() == 1


def test_a_discarded_instance_is_not_copied_to_the_replica_afterwards(
    client, clinic, owner, first_patient_study, tmp_path
):
    held = hold(clinic, tmp_path, first_patient_study)
    client.force_login(owner)
    resolve(client, clinic, held, "discard")

    copied = quarantine_tasks.quarantined_replicate(clinic_id=clinic.pk, held_id=held.pk)

    assert copied is False
    assert not stores.get_store("replica").exists(held.object_key)


# --- clinic data destroyed ---------------------------------------------------------------------------


def test_an_instance_filed_while_the_clinics_data_is_erased_does_not_survive_it(
    clinic, owner, first_patient_study, tmp_path, monkeypatch
):
    from portal.exceptions import PortalError
    from studies import erasure
    from studies.quarantine import services as quarantine

    held = hold(clinic, tmp_path, first_patient_study)
    real_purge = erasure.browse_services.study_purge

    def purge_then_file(**kwargs):
        # The owner files the held instance right after its study was purged by the erasure.
        purged = real_purge(**kwargs)
        with pytest.raises(PortalError):
            quarantine.quarantined_file(clinic=clinic, held=held, actor=owner)
        return purged

    monkeypatch.setattr(erasure.browse_services, "study_purge", purge_then_file)

    erasure.clinic_images_erase(clinic=clinic)

    assert not Instance.objects.for_clinic(clinic).exists()
    assert not Study.objects.for_clinic(clinic).exists()
    assert not QuarantinedInstance.objects.for_clinic(clinic).exists()
    assert not stores.get_store("primary").exists(held.object_key)
    assert used(clinic) == 0


def test_a_discard_while_the_primary_store_fails_can_be_tried_again_and_erases_both_copies(
    client, clinic, owner, first_patient_study, tmp_path, monkeypatch, django_capture_on_commit_callbacks
):
    from studies.archive.errors import StorageUnavailable

    before = used(clinic)
    held = hold(clinic, tmp_path, first_patient_study)
    quarantine_tasks.quarantined_replicate(clinic_id=clinic.pk, held_id=held.pk)
    primary = stores.get_store("primary")
    real_delete = type(primary).delete

    def unreachable(store, key):
        raise StorageUnavailable("The primary store did not answer.")

    monkeypatch.setattr(type(primary), "delete", unreachable)
    client.force_login(owner)
    with celery_eager(), django_capture_on_commit_callbacks(execute=True):
        failed = resolve(client, clinic, held, "discard").content.decode()
    monkeypatch.setattr(type(primary), "delete", real_delete)

    assert "did not answer" in failed
    assert QuarantinedInstance.objects.get().resolved_at is None  # still listed: the owner can try again
    assert used(clinic) > before

    with celery_eager(), django_capture_on_commit_callbacks(execute=True):
        resolve(client, clinic, held, "discard")

    assert not primary.exists(held.object_key)
    assert not stores.get_store("replica").exists(held.object_key)
    assert used(clinic) == before


def test_an_api_token_can_not_use_the_quarantine_pages(clinic, first_patient_study, tmp_path):
    held = hold(clinic, tmp_path, first_patient_study)
    api = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, role='admin')}")

    page = api.get(f"/c/{clinic.slug}/studies/quarantine/")
    answer = api.post(f"/c/{clinic.slug}/studies/quarantine/{held.uuid}/", {"action": "discard"})

    assert page.status_code == answer.status_code == HTTPStatus.FORBIDDEN
    assert "PAT-B" not in page.content.decode()
    assert QuarantinedInstance.objects.get().resolved_at is None


def test_the_file_sent_again_after_it_was_filed_is_answered_as_stored_not_held_again(
    client, clinic, owner, first_patient_study, tmp_path
):
    path = write_ct(tmp_path / "b.dcm", study_uid=first_patient_study.study_instance_uid, patient_id="PAT-B",
                    patient_name="Beta^Bob")
    with pytest.raises(PatientMismatch):
        instance_ingest(clinic=clinic, source_path=str(path))
    held = QuarantinedInstance.objects.get()
    client.force_login(owner)
    resolve(client, clinic, held, "file")
    before = used(clinic)

    with path.open("rb") as fileobj:
        again = client.post(f"/c/{clinic.slug}/upload/files/", {"file": fileobj})

    assert again.json()["outcome"] == "already_present"
    assert QuarantinedInstance.objects.count() == 1
    assert used(clinic) == before


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_filing_and_discarding_at_once_decide_once(clinic, owner, first_patient_study, tmp_path, monkeypatch):
    import threading

    from django.db import connection

    from portal.exceptions import PortalError
    from studies.quarantine import services as quarantine

    held = hold(clinic, tmp_path, first_patient_study)
    before = used(clinic)
    both = threading.Barrier(2, timeout=10)
    real_parse = quarantine._parse_object

    def parse_then_wait(**kwargs):
        parsed = real_parse(**kwargs)
        both.wait()
        return parsed

    monkeypatch.setattr(quarantine, "_parse_object", parse_then_wait)
    outcomes: dict[str, str] = {}

    def decide(name, call):
        try:
            call()
            outcomes[name] = "done"
        except PortalError:
            outcomes[name] = "refused"
        finally:
            connection.close()

    def discard():
        both.wait()
        quarantine.quarantined_discard(clinic=clinic, held=held, actor=owner)

    workers = [
        threading.Thread(target=decide, args=("file", lambda: quarantine.quarantined_file(
            clinic=clinic, held=held, actor=owner))),
        threading.Thread(target=decide, args=("discard", discard)),
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)

    assert sorted(outcomes.values()) == ["done", "refused"]
    filed = Instance.objects.for_clinic(clinic).filter(object_key=held.object_key).exists()
    assert QuarantinedInstance.objects.get().resolution == ("filed" if filed else "discarded")
    assert stores.get_store("primary").exists(held.object_key) is filed
    assert used(clinic) == (before if filed else before - held.size_bytes)

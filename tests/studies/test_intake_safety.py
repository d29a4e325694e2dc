"""Images are never acknowledged and then lost or misfiled (issue 11, items 1, 2, 3, 5 and 17).

Restore against the running trash purge, new files for trashed studies, a Study Instance UID reused for
another patient (quarantine), upload links meeting stored UIDs, and ZIP archives past a full quota.
"""

from __future__ import annotations

import io
import threading
import zipfile
from datetime import timedelta
from http import HTTPStatus

import pytest
from django.db import connection
from django.db.models import F
from django.utils import timezone
from pydicom.uid import generate_uid

from studies.archive import stores
from studies.backup import tasks as backup_tasks
from studies.browse import services
from studies.browse import tasks as browse_tasks
from studies.ingest import tasks
from studies.models import Instance, QuarantinedInstance, Study, UploadBatch
from studies.quarantine import tasks as quarantine_tasks
from studies.sharing import services as sharing_services
from tenants.models import AuditEvent, Clinic
from tests.dicom_files import write_ct, write_series
from tests.factories import ingest_files, token_for
from tests.studies.backup_support import celery_eager
from tests.studies.dicomweb_support import multipart_body


def upload(client, clinic, path):
    with path.open("rb") as fileobj:
        return client.post(f"/c/{clinic.slug}/upload/files/", {"file": fileobj})


def link_upload(client, token, path):
    with path.open("rb") as fileobj:
        return client.post(f"/u/{token}/files/", {"file": fileobj})


def trashed_study(clinic, owner, tmp_path, *, count=3):
    instances = ingest_files(clinic=clinic, paths=write_series(tmp_path / "s", count=count))
    primary, replica = stores.get_store("primary"), stores.get_store("replica")
    for instance in instances:
        with primary.open(instance.object_key) as source:
            replica.put(instance.object_key, source)
    study = Study.objects.get(pk=instances[0].series.study_id)
    services.study_delete(clinic=clinic, study=study, actor=owner)
    return study


def objects_of_live_studies_exist(clinic) -> bool:
    primary, replica = stores.get_store("primary"), stores.get_store("replica")
    live = Instance.objects.for_clinic(clinic).filter(series__study__deleted_at=None)
    return all(primary.exists(i.object_key) and replica.exists(i.object_key) for i in live)


# --- 1. restore racing the purge ----------------------------------------------------------------------


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_restore_while_the_purge_erases_objects_is_refused_and_no_live_study_loses_its_objects(
    client, clinic, owner, tmp_path, monkeypatch
):
    study = trashed_study(clinic, owner, tmp_path, count=4)
    Study.objects.filter(pk=study.pk).update(deleted_at=timezone.now() - timedelta(days=31))
    primary = stores.get_store("primary")
    real_delete = type(primary).delete
    erasing, go_on = threading.Event(), threading.Event()

    def slow_delete(store, key):
        # The purge is part-way through the study's objects when the restore arrives.
        erasing.set()
        go_on.wait(10)
        return real_delete(store, key)

    monkeypatch.setattr(type(primary), "delete", slow_delete)
    results = {}

    def purge():
        try:
            results["purged"] = services.study_purge(clinic=clinic, study_id=study.pk)
        finally:
            connection.close()

    worker = threading.Thread(target=purge)
    worker.start()
    assert erasing.wait(10)
    client.force_login(owner)

    response = client.post(f"/c/{clinic.slug}/studies/{study.uuid}/restore/", follow=True)
    go_on.set()
    worker.join(30)

    assert "can no longer be restored" in response.content.decode()
    assert results["purged"] is True
    assert not Study.objects.filter(pk=study.pk).exists()
    assert objects_of_live_studies_exist(clinic)
    assert not AuditEvent.objects.filter(action="study.restored").exists()


@pytest.mark.slow
@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_a_file_arriving_while_the_purge_erases_its_study_is_refused_then_stored_as_a_new_study(
    client, clinic, owner, uploader, tmp_path, monkeypatch
):
    study = trashed_study(clinic, owner, tmp_path, count=3)
    primary = stores.get_store("primary")
    real_delete = type(primary).delete
    erasing, go_on = threading.Event(), threading.Event()

    def slow_delete(store, key):
        erasing.set()
        go_on.wait(10)
        return real_delete(store, key)

    monkeypatch.setattr(type(primary), "delete", slow_delete)
    worker = threading.Thread(
        target=lambda: (services.study_purge(clinic=clinic, study_id=study.pk), connection.close())
    )
    worker.start()
    assert erasing.wait(10)
    client.force_login(uploader)
    path = write_ct(
        tmp_path / "late.dcm",
        study_uid=study.study_instance_uid,
        patient_id=study.patient.patient_id,
        patient_name=study.patient.patient_name,
    )

    during = upload(client, clinic, path)
    go_on.set()
    worker.join(30)
    monkeypatch.setattr(type(primary), "delete", real_delete)
    after = upload(client, clinic, path)

    assert during.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert after.status_code == HTTPStatus.CREATED
    again = Study.objects.for_clinic(clinic).get(study_instance_uid=study.study_instance_uid)
    assert again.pk != study.pk and again.deleted_at is None and again.number_of_instances == 1
    assert all(primary.exists(i.object_key) for i in Instance.objects.for_clinic(clinic))


def test_a_purge_message_for_a_study_trashed_again_since_is_ignored(clinic, owner, tmp_path):
    study = trashed_study(clinic, owner, tmp_path)
    Study.objects.filter(pk=study.pk).update(deleted_at=timezone.now() - timedelta(days=31))
    services.study_restore(clinic=clinic, study=study, actor=owner)
    services.study_delete(clinic=clinic, study=study, actor=owner)  # trashed again today

    browse_tasks.study_purge.apply(kwargs={"clinic_id": clinic.pk, "study_id": study.pk})

    assert Study.objects.filter(pk=study.pk, deleted_at__isnull=False).exists()
    assert Instance.objects.for_clinic(clinic).count() == 3
    assert all(stores.get_store("primary").exists(i.object_key) for i in Instance.objects.for_clinic(clinic))


def test_purge_stops_before_an_object_that_no_longer_belongs_to_it(clinic, owner, tmp_path, monkeypatch):
    study = trashed_study(clinic, owner, tmp_path)
    primary = stores.get_store("primary")
    real_delete = type(primary).delete
    deleted = []

    def delete_then_restore_behind_the_purge(store, key):
        deleted.append(key)
        # Someone (an operator in the database, an older release) takes the study back mid-purge.
        Study.objects.filter(pk=study.pk).update(deleted_at=None, purge_started_at=None)
        return real_delete(store, key)

    monkeypatch.setattr(type(primary), "delete", delete_then_restore_behind_the_purge)

    assert services.study_purge(clinic=clinic, study_id=study.pk) is False
    assert len(set(deleted)) == 1  # the re-check before the next object stopped it
    assert Instance.objects.for_clinic(clinic).count() == 3


# --- 2. new files for a trashed study -----------------------------------------------------------------


def test_a_new_instance_for_a_trashed_study_brings_the_study_back_audited(client, clinic, owner, tmp_path):
    study = trashed_study(clinic, owner, tmp_path)
    client.force_login(owner)
    path = write_ct(
        tmp_path / "new.dcm",
        study_uid=study.study_instance_uid,
        patient_id=study.patient.patient_id,
        patient_name=study.patient.patient_name,
    )

    response = upload(client, clinic, path)

    assert response.status_code == HTTPStatus.CREATED
    study.refresh_from_db()
    assert study.deleted_at is None
    assert Instance.objects.for_clinic(clinic).filter(series__study=study).count() == 4
    restored = AuditEvent.objects.get(action="study.restored")
    assert restored.object_id == str(study.uuid) and restored.details["reason"] == "new instance received"
    assert study in client.get(f"/c/{clinic.slug}/studies/").context["page"].object_list


def test_a_new_instance_for_a_study_being_purged_is_refused_as_retry_later(client, clinic, owner, tmp_path):
    study = trashed_study(clinic, owner, tmp_path)
    Study.objects.filter(pk=study.pk).update(purge_started_at=timezone.now())
    client.force_login(owner)
    path = write_ct(
        tmp_path / "new.dcm",
        study_uid=study.study_instance_uid,
        patient_id=study.patient.patient_id,
        patient_name=study.patient.patient_name,
    )
    used = Clinic.objects.get(pk=clinic.pk).used_bytes

    response = upload(client, clinic, path)

    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert response.json()["outcome"] == "error"
    assert "send the file again" in response.json()["reason"]
    assert Instance.objects.for_clinic(clinic).count() == 3
    assert Clinic.objects.get(pk=clinic.pk).used_bytes == used


# --- 3. a Study Instance UID reused for another patient -----------------------------------------------


@pytest.fixture
def first_patient_study(clinic, tmp_path):
    ingest_files(clinic=clinic, paths=[write_ct(tmp_path / "a.dcm", patient_id="PAT-A", patient_name="Alpha^Ann")])
    return Study.objects.for_clinic(clinic).get()


def other_patient_file(tmp_path, study, name="b.dcm"):
    return write_ct(tmp_path / name, study_uid=study.study_instance_uid, patient_id="PAT-B", patient_name="Beta^Bob")


def test_a_study_uid_reused_for_another_patient_is_held_not_filed_under_the_first(
    client, clinic, uploader, first_patient_study, tmp_path
):
    client.force_login(uploader)

    response = upload(client, clinic, other_patient_file(tmp_path, first_patient_study))

    assert response.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert response.json()["outcome"] == "rejected"
    assert "Held for review" in response.json()["reason"]
    assert Instance.objects.for_clinic(clinic).count() == 1
    held = QuarantinedInstance.objects.get()
    assert held.reason == "patient_mismatch" and held.patient_id == "PAT-B" and held.study == first_patient_study
    assert stores.get_store("primary").exists(held.object_key)
    assert AuditEvent.objects.get(action="instance.quarantined").object_id == str(held.uuid)


def test_the_same_patient_with_differently_written_name_is_filed_normally(
    client, clinic, uploader, first_patient_study, tmp_path
):
    client.force_login(uploader)
    path = write_ct(
        tmp_path / "c.dcm",
        study_uid=first_patient_study.study_instance_uid,
        patient_id="PAT-A",
        patient_name="ALPHA^ANN^^^",
    )

    response = upload(client, clinic, path)

    assert response.status_code == HTTPStatus.CREATED
    assert not QuarantinedInstance.objects.exists()


def test_stow_answers_a_held_instance_with_failure_reason_c410(client, clinic, first_patient_study, tmp_path):
    body, content_type = multipart_body([other_patient_file(tmp_path, first_patient_study)])

    response = client.generic(
        "POST",
        f"/dicomweb/{clinic.slug}/studies",
        body,
        content_type=content_type,
        HTTP_AUTHORIZATION=f"Bearer {token_for(clinic, role='uploader')}",
    )

    assert response.status_code == HTTPStatus.CONFLICT
    assert [item["00081197"]["Value"][0] for item in response.json()["00081198"]["Value"]] == [0xC410]
    assert QuarantinedInstance.objects.count() == 1
    assert Instance.objects.for_clinic(clinic).count() == 1


def test_sending_the_held_file_again_keeps_one_entry_and_one_object(
    client, clinic, uploader, first_patient_study, tmp_path
):
    client.force_login(uploader)
    path = other_patient_file(tmp_path, first_patient_study)
    upload(client, clinic, path)
    used = Clinic.objects.get(pk=clinic.pk).used_bytes

    again = upload(client, clinic, path)

    assert again.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert QuarantinedInstance.objects.count() == 1
    assert Clinic.objects.get(pk=clinic.pk).used_bytes == used


def test_held_instances_are_copied_to_the_replica_by_the_sweep(clinic, first_patient_study, tmp_path):
    from studies.errors import PatientMismatch
    from studies.ingest import instance_ingest

    with pytest.raises(PatientMismatch):
        instance_ingest(clinic=clinic, source_path=str(other_patient_file(tmp_path, first_patient_study)))
    held = QuarantinedInstance.objects.get()
    QuarantinedInstance.objects.filter(pk=held.pk).update(received_at=timezone.now() - timedelta(minutes=5))

    with celery_eager():
        swept = tasks.intake_sweep.apply().get()

    assert swept["quarantined"] == 1
    assert stores.get_store("replica").exists(held.object_key)
    assert QuarantinedInstance.objects.get().replicated_at is not None


def test_owner_sees_the_held_instance_and_files_it_into_its_study(client, clinic, owner, first_patient_study, tmp_path):
    from studies.errors import PatientMismatch
    from studies.ingest import instance_ingest

    with pytest.raises(PatientMismatch):
        instance_ingest(clinic=clinic, source_path=str(other_patient_file(tmp_path, first_patient_study)))
    held = QuarantinedInstance.objects.get()
    client.force_login(owner)

    page = client.get(f"/c/{clinic.slug}/studies/quarantine/")
    response = client.post(f"/c/{clinic.slug}/studies/quarantine/{held.uuid}/", {"action": "file"})

    assert page.status_code == HTTPStatus.OK and "Beta" in page.content.decode()
    assert response.status_code == HTTPStatus.FOUND
    filed = Instance.objects.for_clinic(clinic).get(object_key=held.object_key)
    assert filed.series.study == first_patient_study
    assert QuarantinedInstance.objects.get().resolution == "filed"
    assert AuditEvent.objects.filter(action="quarantine.filed", object_id=str(held.uuid)).exists()
    assert "Nothing is held" in client.get(f"/c/{clinic.slug}/studies/quarantine/").content.decode()


def held_for_trashed_study(clinic, owner, study, tmp_path):
    from studies.errors import PatientMismatch
    from studies.ingest import instance_ingest

    with pytest.raises(PatientMismatch):
        instance_ingest(clinic=clinic, source_path=str(other_patient_file(tmp_path, study)))
    services.study_delete(clinic=clinic, study=study, actor=owner)
    return QuarantinedInstance.objects.get()


def test_filing_a_held_instance_into_a_trashed_study_brings_the_study_back_audited(
    client, clinic, owner, first_patient_study, tmp_path
):
    held = held_for_trashed_study(clinic, owner, first_patient_study, tmp_path)
    client.force_login(owner)

    client.post(f"/c/{clinic.slug}/studies/quarantine/{held.uuid}/", {"action": "file"})

    first_patient_study.refresh_from_db()
    assert first_patient_study.deleted_at is None
    assert Instance.objects.for_clinic(clinic).get(object_key=held.object_key).series.study == first_patient_study
    restored = AuditEvent.objects.get(action="study.restored")
    assert restored.object_id == str(first_patient_study.uuid)
    assert restored.details["reason"] == "quarantined instance filed"


def test_filing_a_held_instance_while_its_study_is_purged_is_refused_and_nothing_changes(
    client, clinic, owner, first_patient_study, tmp_path
):
    held = held_for_trashed_study(clinic, owner, first_patient_study, tmp_path)
    Study.objects.filter(pk=first_patient_study.pk).update(purge_started_at=timezone.now())
    client.force_login(owner)

    response = client.post(f"/c/{clinic.slug}/studies/quarantine/{held.uuid}/", {"action": "file"}, follow=True)

    assert "being erased from the trash" in response.content.decode()
    assert QuarantinedInstance.objects.get().resolved_at is None
    assert Study.objects.get(pk=first_patient_study.pk).deleted_at is not None
    assert not Instance.objects.for_clinic(clinic).filter(object_key=held.object_key).exists()
    assert not AuditEvent.objects.filter(action="study.restored").exists()


def test_owner_discards_a_held_instance_and_its_space_is_given_back(
    client, clinic, owner, first_patient_study, tmp_path
):
    from studies.errors import PatientMismatch
    from studies.ingest import instance_ingest

    used_before = Clinic.objects.get(pk=clinic.pk).used_bytes
    with pytest.raises(PatientMismatch):
        instance_ingest(clinic=clinic, source_path=str(other_patient_file(tmp_path, first_patient_study)))
    held = QuarantinedInstance.objects.get()
    client.force_login(owner)

    client.post(f"/c/{clinic.slug}/studies/quarantine/{held.uuid}/", {"action": "discard"})

    assert not stores.get_store("primary").exists(held.object_key)
    assert Clinic.objects.get(pk=clinic.pk).used_bytes == used_before
    assert QuarantinedInstance.objects.get().resolution == "discarded"
    assert Instance.objects.for_clinic(clinic).count() == 1


def test_clinician_may_not_resolve_and_outsider_gets_404(
    client, clinic, clinician, outsider, first_patient_study, tmp_path
):
    from studies.errors import PatientMismatch
    from studies.ingest import instance_ingest

    with pytest.raises(PatientMismatch):
        instance_ingest(clinic=clinic, source_path=str(other_patient_file(tmp_path, first_patient_study)))
    held = QuarantinedInstance.objects.get()
    url = f"/c/{clinic.slug}/studies/quarantine/{held.uuid}/"
    client.force_login(clinician)
    forbidden = client.post(url, {"action": "discard"})
    client.force_login(outsider)
    hidden = client.post(url, {"action": "discard"})
    outsider_page = client.get(f"/c/{clinic.slug}/studies/quarantine/")

    assert forbidden.status_code == HTTPStatus.FORBIDDEN
    assert hidden.status_code == HTTPStatus.NOT_FOUND and outsider_page.status_code == HTTPStatus.NOT_FOUND
    assert QuarantinedInstance.objects.get().resolved_at is None
    assert stores.get_store("primary").exists(held.object_key)


# --- 17. upload links never join existing studies, and answer alike --------------------------------


@pytest.fixture
def link_token(clinic, owner):
    return sharing_services.upload_link_create(clinic=clinic, created_by=owner).token


def test_upload_link_file_naming_an_existing_study_does_not_join_it(
    client, clinic, link_token, first_patient_study, tmp_path
):
    # Same patient even: an outside sender still can't add to a stored study.
    path = write_ct(
        tmp_path / "x.dcm",
        study_uid=first_patient_study.study_instance_uid,
        patient_id="PAT-A",
        patient_name="Alpha^Ann",
    )
    fresh = write_ct(tmp_path / "fresh.dcm")

    known = link_upload(client, link_token, path)
    new = link_upload(client, link_token, fresh)

    assert (
        (known.status_code, known.json())
        == (new.status_code, new.json())
        == (HTTPStatus.CREATED, {"outcome": "stored", "reason": ""})
    )
    assert Instance.objects.for_clinic(clinic).filter(series__study=first_patient_study).count() == 1
    assert QuarantinedInstance.objects.get().reason == "outside_sender"


def test_upload_link_answers_a_stored_sop_or_series_uid_like_a_new_file(
    client, clinic, link_token, first_patient_study, tmp_path
):
    stored = Instance.objects.for_clinic(clinic).get()
    same_sop = write_ct(tmp_path / "sop.dcm", sop_uid=stored.sop_instance_uid, pixel_seed=7)
    same_series = write_ct(tmp_path / "series.dcm", series_uid=stored.series.series_instance_uid)
    fresh = write_ct(tmp_path / "fresh.dcm", study_uid=generate_uid())

    answers = [link_upload(client, link_token, path) for path in (same_sop, same_series, fresh)]

    assert {(a.status_code, a.content) for a in answers} == {
        (HTTPStatus.CREATED, b'{"outcome": "stored", "reason": ""}')
    }
    assert Instance.objects.for_clinic(clinic).get(sop_instance_uid=stored.sop_instance_uid).sha256 == stored.sha256
    assert QuarantinedInstance.objects.count() == 2


def test_upload_link_zip_members_never_join_an_existing_study(
    client, clinic, link_token, first_patient_study, tmp_path, django_capture_on_commit_callbacks
):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(
            "IMG/1",
            write_ct(
                tmp_path / "in-study.dcm",
                study_uid=first_patient_study.study_instance_uid,
                patient_id="PAT-A",
                patient_name="Alpha^Ann",
            ).read_bytes(),
        )
        zf.writestr("IMG/2", write_ct(tmp_path / "new.dcm").read_bytes())

    response = link_upload(client, link_token, archive)
    batch = UploadBatch.objects.get()
    tasks.upload_zip_extract(clinic_id=clinic.pk, batch_id=batch.pk)

    assert response.status_code == HTTPStatus.ACCEPTED
    assert Instance.objects.for_clinic(clinic).filter(series__study=first_patient_study).count() == 1
    assert Instance.objects.for_clinic(clinic).count() == 2  # the new study's file is stored
    held = QuarantinedInstance.objects.get()
    assert held.reason == "outside_sender" and held.upload_link == batch.upload_link


# --- 5. ZIP archives past a full quota --------------------------------------------------------------


def small_zip(tmp_path):
    archive = tmp_path / "cd.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("IMG/1", write_ct(tmp_path / "z1.dcm").read_bytes())
    return archive


def fill_quota(clinic):
    # A quota really full: usage no index row accounts for would be recounted away before refusing.
    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=F("used_bytes"))


def test_zip_upload_is_refused_at_the_door_when_the_quota_is_full(client, clinic, tmp_path):
    fill_quota(clinic)
    token = token_for(clinic, role="uploader")

    with small_zip(tmp_path).open("rb") as fileobj:
        response = client.post(
            f"/api/v1/clinics/{clinic.slug}/uploads/", {"file": fileobj}, HTTP_AUTHORIZATION=f"Bearer {token}"
        )

    assert response.status_code == HTTPStatus.INSUFFICIENT_STORAGE
    assert response.json()["outcome"] == "rejected"
    assert "Not enough storage left" in response.json()["reason"]
    assert not UploadBatch.objects.exists()
    assert not list(stores.get_store("primary").list(f"clinics/{clinic.uuid}/objects/"))


def test_zip_through_an_upload_link_is_refused_at_the_door_when_the_quota_is_full(client, clinic, link_token, tmp_path):
    fill_quota(clinic)

    response = link_upload(client, link_token, small_zip(tmp_path))

    assert response.status_code == HTTPStatus.INSUFFICIENT_STORAGE
    # An outside sender is not told the clinic's plan or usage.
    assert response.json()["reason"] == "The clinic cannot receive files right now; try again later."
    assert not UploadBatch.objects.exists()


def test_zip_upload_with_room_left_is_still_queued(
    client, clinic, uploader, tmp_path, django_capture_on_commit_callbacks
):
    client.force_login(uploader)

    with django_capture_on_commit_callbacks() as callbacks, small_zip(tmp_path).open("rb") as fileobj:
        response = client.post(f"/c/{clinic.slug}/upload/files/", {"file": io.BytesIO(fileobj.read())})

    assert response.status_code == HTTPStatus.ACCEPTED
    batch = UploadBatch.objects.get()
    assert batch.status == "queued"
    # The batch's extraction is queued once the request commits (not merely "a callback").
    queued = [c.keywords for c in callbacks if getattr(c, "func", None) == tasks.upload_zip_extract.delay]
    assert queued == [{"clinic_id": clinic.pk, "batch_id": batch.pk}]


def test_destroying_a_clinics_data_erases_its_held_instances_too(clinic, owner, first_patient_study, tmp_path):
    from billing import services as billing_services
    from billing.models import Subscription
    from studies.errors import PatientMismatch
    from studies.ingest import instance_ingest

    with pytest.raises(PatientMismatch):
        instance_ingest(clinic=clinic, source_path=str(other_patient_file(tmp_path, first_patient_study)))
    held = QuarantinedInstance.objects.get()
    quarantine_tasks.quarantined_replicate(clinic_id=clinic.pk, held_id=held.pk)
    billing_services.subscription_cancel(clinic=clinic, user=owner)
    Subscription.objects.filter(clinic=clinic).update(read_only_until=timezone.now() - timedelta(seconds=1))

    billing_services.clinic_data_destroy(clinic=clinic)

    assert not QuarantinedInstance.objects.exists()
    assert not stores.get_store("primary").exists(held.object_key)
    assert not stores.get_store("replica").exists(held.object_key)


def test_owners_and_admins_are_told_without_patient_data_and_see_a_dashboard_card(
    client, clinic, owner, admin, clinician, first_patient_study, tmp_path, django_capture_on_commit_callbacks
):
    from django.core import mail

    from studies.errors import PatientMismatch
    from studies.ingest import instance_ingest

    with celery_eager(), django_capture_on_commit_callbacks(execute=True), pytest.raises(PatientMismatch):
        instance_ingest(clinic=clinic, source_path=str(other_patient_file(tmp_path, first_patient_study)))
    client.force_login(admin)
    admin_page = client.get(f"/c/{clinic.slug}/").content.decode()
    client.force_login(clinician)
    clinician_page = client.get(f"/c/{clinic.slug}/").content.decode()

    [message] = [m for m in mail.outbox if "held for review" in m.subject]
    assert set(message.to) == {owner.email, admin.email}
    assert "Beta" not in message.body and "PAT-B" not in message.body
    assert f"/c/{clinic.slug}/studies/quarantine/" in message.body
    assert "Held for review" in admin_page and "Held for review" not in clinician_page


def test_rebuilding_the_index_from_the_replica_leaves_held_instances_held(clinic, first_patient_study, tmp_path):
    from studies.backup import recovery
    from studies.errors import PatientMismatch
    from studies.ingest import instance_ingest

    for instance in Instance.objects.for_clinic(clinic):
        backup_tasks.instance_replicate(clinic_id=clinic.pk, instance_id=instance.pk)
    with pytest.raises(PatientMismatch):
        instance_ingest(clinic=clinic, source_path=str(other_patient_file(tmp_path, first_patient_study)))
    quarantine_tasks.quarantined_replicate(clinic_id=clinic.pk, held_id=QuarantinedInstance.objects.get().pk)

    recovery.index_rebuild(clinic_uuids=[clinic.uuid])

    assert Instance.objects.for_clinic(clinic).count() == 1
    assert Instance.objects.for_clinic(clinic).get().series.study.patient.patient_id == "PAT-A"

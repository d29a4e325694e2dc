"""Anonymize on ingest: the original never reaches storage; rules per clinic, token, node and upload link.

Also: billing's upload pause applies to every ingest path.
"""

from __future__ import annotations

import io
import shutil
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path

import pydicom
import pytest
from django.utils import timezone

from billing.models import Subscription, SubscriptionStatus
from studies.anonymize import services
from studies.anonymize.models import AnonymizedStudy, IngestAnonymization
from studies.archive import objects, stores
from studies.errors import QuotaExceeded
from studies.ingest import instance_ingest
from studies.models import DicomNode, Instance, Study
from studies.sharing import services as sharing
from tenants import services as tenant_services
from tenants.roles import Role
from tests.dicom_files import PYDICOM_SAMPLES as SAMPLES  # noqa: E402

ORIGINAL_NAME = str(pydicom.dcmread(SAMPLES / "CT_small.dcm").PatientName)


def copy(name: str, tmp_path: Path, **changes) -> Path:
    path = tmp_path / name
    shutil.copy(SAMPLES / name, path)
    if changes:
        ds = pydicom.dcmread(path)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    return path


def stored_plaintexts(clinic) -> list[bytes]:
    """Decrypt every object the clinic has in the primary store."""
    store = stores.get_store("primary")
    keys = [key for key in store.list(f"clinics/{clinic.uuid}/objects/")]
    texts = []
    for key in keys:
        with objects.object_open(clinic=clinic, key=key, store="primary") as stream:
            texts.append(stream.read())
    return texts


@pytest.fixture
def project(clinic):
    return services.project_create(clinic=clinic, name="Registry", pseudonym_prefix="REG")


def test_clinic_wide_rule_stores_only_the_anonymized_copy(client, clinic, uploader, project):
    services.ingest_rules_set(project=project, clinic_wide=True, api_tokens=[], dicom_nodes=[])
    client.force_login(uploader)

    response = client.post(f"/c/{clinic.slug}/upload/files/", {"file": io.BytesIO((SAMPLES / "CT_small.dcm").read_bytes())})

    assert response.status_code == HTTPStatus.CREATED
    instance = Instance.objects.get()
    ds = pydicom.dcmread(io.BytesIO(stored_plaintexts(clinic)[0]))
    assert str(ds.PatientName) == "REG-0001" and ds.PatientIdentityRemoved == "YES"
    assert not any(ORIGINAL_NAME.encode() in text for text in stored_plaintexts(clinic))
    assert instance.series.study.patient.patient_name == "REG-0001"
    link = AnonymizedStudy.objects.get(study=instance.series.study)
    assert (link.project, link.source_study) == (project, None)


def test_the_same_patient_arriving_again_gets_the_same_pseudonym(clinic, project, tmp_path):
    services.ingest_rules_set(project=project, clinic_wide=True, api_tokens=[], dicom_nodes=[])
    first = pydicom.dcmread(SAMPLES / "CT_small.dcm")

    instance_ingest(clinic=clinic, source_path=str(copy("CT_small.dcm", tmp_path)))
    instance_ingest(clinic=clinic, source_path=str(copy("MR_small.dcm", tmp_path, PatientID=first.PatientID,
                                                       PatientName=first.PatientName)))

    assert set(Study.objects.for_clinic(clinic).values_list("patient__patient_name", flat=True)) == {"REG-0001"}


def test_token_rule_applies_to_that_token_only(client, clinic, project, owner):
    ruled = tenant_services.api_token_create(clinic=clinic, name="modality gateway", role=Role.UPLOADER)
    plain = tenant_services.api_token_create(clinic=clinic, name="other", role=Role.UPLOADER)
    services.ingest_rules_set(project=project, clinic_wide=False, api_tokens=[ruled.token], dicom_nodes=[])

    client.post(f"/c/{clinic.slug}/upload/files/", {"file": io.BytesIO((SAMPLES / "CT_small.dcm").read_bytes())},
                HTTP_AUTHORIZATION=f"Bearer {ruled.secret}")
    client.post(f"/c/{clinic.slug}/upload/files/", {"file": io.BytesIO((SAMPLES / "MR_small.dcm").read_bytes())},
                HTTP_AUTHORIZATION=f"Bearer {plain.secret}")

    names = sorted(Study.objects.for_clinic(clinic).values_list("patient__patient_name", flat=True))
    assert names[1] == "REG-0001" and names[0] != "REG-0001"


def test_dicom_node_rule_applies_to_what_the_node_sends(clinic, project, tmp_path):
    node = DicomNode.objects.create(clinic=clinic, ae_title="CT_SCANNER", host="127.0.0.1", port=104)
    services.ingest_rules_set(project=project, clinic_wide=False, api_tokens=[], dicom_nodes=[node])

    result = instance_ingest(clinic=clinic, source_path=str(copy("CT_small.dcm", tmp_path)), source="dimse",
                             dicom_node=node)

    assert result.instance.series.study.patient.patient_name == "REG-0001"
    assert IngestAnonymization.objects.get().dicom_node == node


def test_upload_link_with_a_project_anonymizes_what_arrives(client, clinic, owner, project):
    created = sharing.upload_link_create(clinic=clinic, created_by=owner, anonymize_project=project)

    client.post(f"/u/{created.token}/files/", {"file": io.BytesIO((SAMPLES / "CT_small.dcm").read_bytes())})

    assert Study.objects.for_clinic(clinic).get().patient.patient_name == "REG-0001"
    assert not any(ORIGINAL_NAME.encode() in text for text in stored_plaintexts(clinic))


def test_malformed_file_is_refused_before_anonymization(clinic, project, tmp_path):
    services.ingest_rules_set(project=project, clinic_wide=True, api_tokens=[], dicom_nodes=[])
    broken = tmp_path / "broken.dcm"
    broken.write_bytes((SAMPLES / "CT_small.dcm").read_bytes()[:2000])

    with pytest.raises(Exception) as raised:
        instance_ingest(clinic=clinic, source_path=str(broken))

    assert type(raised.value).__name__ in {"InvalidDicom", "NotDicom"}
    assert not Instance.objects.exists() and not stored_plaintexts(clinic)


def test_rules_are_set_from_the_project_page_by_admins(client, clinic, admin, project):
    client.force_login(admin)

    client.post(f"/c/{clinic.slug}/anonymize/projects/{project.uuid}/", {"ingest_rules": "1", "clinic_wide": "on"})

    assert IngestAnonymization.objects.get().applies_to == IngestAnonymization.AppliesTo.CLINIC


# --- billing pauses uploads on every path -----------------------------------------------------------


def test_canceled_subscription_refuses_uploads_with_the_reason(client, clinic, uploader, tmp_path):
    Subscription.objects.filter(clinic=clinic).update(status=SubscriptionStatus.CANCELED,
                                                      read_only_until=timezone.now() + timedelta(days=30))
    client.force_login(uploader)

    response = client.post(f"/c/{clinic.slug}/upload/files/", {"file": io.BytesIO((SAMPLES / "CT_small.dcm").read_bytes())})

    assert response.status_code == HTTPStatus.INSUFFICIENT_STORAGE
    assert "canceled" in response.json()["reason"]
    assert not Instance.objects.exists()
    with pytest.raises(QuotaExceeded):
        instance_ingest(clinic=clinic, source_path=str(copy("MR_small.dcm", tmp_path)), source="dimse")


def test_reading_keeps_working_while_uploads_are_paused(client, clinic, clinician, tmp_path):
    study = instance_ingest(clinic=clinic, source_path=str(copy("CT_small.dcm", tmp_path))).instance.series.study
    Subscription.objects.filter(clinic=clinic).update(status=SubscriptionStatus.PAST_DUE,
                                                      grace_ends_at=timezone.now() - timedelta(days=1))
    client.force_login(clinician)

    page = client.get(f"/c/{clinic.slug}/studies/{study.uuid}/")
    download = client.get(f"/c/{clinic.slug}/studies/{study.uuid}/download/")

    assert (page.status_code, download.status_code) == (HTTPStatus.OK, HTTPStatus.OK)


def test_upload_page_option_anonymizes_files_and_archives(client, clinic, clinician, project, tmp_path):
    import zipfile

    from studies.ingest import tasks

    # Choosing a project needs the anonymize right (test_upload_anonymize_choice covers the uploader).
    client.force_login(clinician)
    page = client.get(f"/c/{clinic.slug}/upload/")
    archive = tmp_path / "cd.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(SAMPLES / "MR_small.dcm", "DICOM/IMG0001")

    single = client.post(f"/c/{clinic.slug}/upload/files/", {
        "file": io.BytesIO((SAMPLES / "CT_small.dcm").read_bytes()), "anonymize_project": str(project.uuid)})
    with archive.open("rb") as fileobj:
        queued = client.post(f"/c/{clinic.slug}/upload/files/", {"file": fileobj, "anonymize_project": str(project.uuid)})
    from studies.models import UploadBatch

    batch = UploadBatch.objects.get()
    tasks.upload_zip_extract(clinic_id=clinic.pk, batch_id=batch.pk)

    assert b"anonymize-project" in page.content
    assert (single.status_code, queued.status_code) == (HTTPStatus.CREATED, HTTPStatus.ACCEPTED)
    names = set(Study.objects.for_clinic(clinic).values_list("patient__patient_name", flat=True))
    assert names == {"REG-0001", "REG-0002"}
    assert not any(ORIGINAL_NAME.encode() in text for text in stored_plaintexts(clinic))


def test_unknown_project_in_an_upload_is_refused(client, clinic, clinician, other_clinic):
    foreign = services.project_create(clinic=other_clinic, name="Theirs")
    client.force_login(clinician)

    response = client.post(f"/c/{clinic.slug}/upload/files/", {
        "file": io.BytesIO((SAMPLES / "CT_small.dcm").read_bytes()), "anonymize_project": str(foreign.uuid)})

    assert response.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert not Instance.objects.exists()

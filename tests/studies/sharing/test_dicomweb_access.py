"""A share link's DICOMweb: what a view-only link hands out, who the audit names, what the link's page lists,
and what a recipient's browser may keep."""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from studies.ingest import instance_ingest
from studies.models import Instance, Study
from studies.sharing import services
from studies.sharing.models import ShareAccess
from tenants.models import AuditEvent
from tests.dicom_files import PYDICOM_SAMPLES as SAMPLES
from tests.dicom_files import dataset_write, sample_dataset

pytestmark = pytest.mark.django_db

DICOM_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
SEG = "1.2.840.10008.5.1.4.1.1.66.4"


def first_instance(study: Study) -> Instance:
    return Instance.objects.filter(series__study=study).select_related("series").get()


def instance_url(token: str, instance: Instance) -> str:
    return (f"/s/{token}/dicomweb/studies/{instance.series.study.study_instance_uid}"
            f"/series/{instance.series.series_instance_uid}/instances/{instance.sop_instance_uid}")


def body_of(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_view_only_link_does_not_hand_out_the_dicom_files(client, clinic, study, level):
    created = services.share_create(clinic=clinic, studies=[study], created_by=None, allow_download=False)
    instance = first_instance(study)
    url = {
        "study": f"/s/{created.token}/dicomweb/studies/{study.study_instance_uid}",
        "series": instance_url(created.token, instance).rsplit("/instances/", 1)[0],
        "instance": instance_url(created.token, instance),
    }[level]

    response = client.get(url, HTTP_ACCEPT=DICOM_ACCEPT)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert response.json()["error"] == "download_not_allowed"
    assert (SAMPLES / "CT_small.dcm").read_bytes()[128:1000] not in body_of(response)


def test_view_only_link_does_not_hand_out_an_images_pixel_data_as_bulk_data(client, clinic, study):
    created = services.share_create(clinic=clinic, studies=[study], created_by=None)

    response = client.get(instance_url(created.token, first_instance(study)) + "/bulkdata/7FE00010")

    assert response.status_code == HTTPStatus.FORBIDDEN


def test_link_that_allows_download_hands_out_the_dicom_files(client, clinic, study):
    created = services.share_create(clinic=clinic, studies=[study], created_by=None, allow_download=True)

    response = client.get(f"/s/{created.token}/dicomweb/studies/{study.study_instance_uid}", HTTP_ACCEPT=DICOM_ACCEPT)

    assert response.status_code == HTTPStatus.OK
    assert (SAMPLES / "CT_small.dcm").read_bytes()[128:1000] in body_of(response)


def _seg(tmp_path: Path) -> Path:
    ds = sample_dataset("CT_small.dcm", SOPClassUID=SEG, Modality="SEG", StudyInstanceUID=generate_uid(),
                        SeriesInstanceUID=generate_uid())
    ds.file_meta.MediaStorageSOPClassUID = SEG
    return dataset_write(ds, tmp_path / "seg.dcm")


def _sr(tmp_path: Path) -> Path:
    return dataset_write(sample_dataset("test-SR.dcm"), tmp_path / "sr.dcm")


@pytest.mark.parametrize("make", [_seg, _sr], ids=["SEG", "SR"])
def test_view_only_link_still_serves_the_objects_a_viewer_loads_whole(client, clinic, tmp_path, make):
    path = make(tmp_path)
    stored = instance_ingest(clinic=clinic, source_path=str(path)).instance
    created = services.share_create(clinic=clinic, studies=[stored.series.study], created_by=None)

    response = client.get(instance_url(created.token, stored), HTTP_ACCEPT=DICOM_ACCEPT)

    assert response.status_code == HTTPStatus.OK
    assert stored.sop_instance_uid.encode() in body_of(response)


def test_dicomweb_reads_through_a_link_are_listed_on_the_links_page(client, clinic, clinician, study):
    created = services.share_create(clinic=clinic, studies=[study], created_by=clinician, allow_download=True)
    base = f"/s/{created.token}/dicomweb/studies/{study.study_instance_uid}"

    # A standard viewer reads the study straight from DICOMweb, several times within a minute.
    for _ in range(3):
        assert client.get(base + "/metadata", HTTP_USER_AGENT="Weasis/4.0").status_code == HTTPStatus.OK
    retrieved = client.get(base, HTTP_ACCEPT=DICOM_ACCEPT, HTTP_USER_AGENT="Weasis/4.0")
    body_of(retrieved)

    assert retrieved.status_code == HTTPStatus.OK
    assert sorted(ShareAccess.objects.filter(share=created.share).values_list("action", flat=True)) == [
        "dicomweb instances", "dicomweb metadata",
    ]
    client.force_login(clinician)
    detail = client.get(f"/c/{clinic.slug}/shares/{created.share.uuid}/").content.decode()
    assert "Weasis/4.0" in detail and "dicomweb instances" in detail


def test_reads_through_a_link_by_a_signed_in_outsider_name_the_link_in_the_audit(client, clinic, outsider, study):
    created = services.share_create(clinic=clinic, studies=[study], created_by=None)
    client.force_login(outsider)  # a doctor of another clinic, signed in to the portal, opens this clinic's link

    response = client.get(f"/s/{created.token}/dicomweb/studies/{study.study_instance_uid}/metadata")

    assert response.status_code == HTTPStatus.OK
    event = AuditEvent.objects.get(clinic=clinic, action="dicomweb.retrieve")
    assert (event.actor_label, event.actor) == (f"share:{created.share.uuid}", None)


@pytest.mark.parametrize("what", ["metadata", "frames", "rendered", "not found"])
def test_share_dicomweb_answers_are_not_stored_by_the_browser(client, clinic, study, what):
    created = services.share_create(clinic=clinic, studies=[study], created_by=None)
    instance = instance_url(created.token, first_instance(study))
    url = {
        "metadata": f"/s/{created.token}/dicomweb/studies/{study.study_instance_uid}/metadata",
        "frames": instance + "/frames/1",
        "rendered": instance + "/rendered",
        "not found": f"/s/{created.token}/dicomweb/studies/1.2.3/metadata",
    }[what]

    response = client.get(url)

    assert response.status_code == (HTTPStatus.NOT_FOUND if what == "not found" else HTTPStatus.OK)
    assert "no-store" in response["Cache-Control"] and "private" in response["Cache-Control"]

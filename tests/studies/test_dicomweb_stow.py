"""STOW-RS: storing instances, the Store Instances Response, failure reasons and HTTP statuses."""

from __future__ import annotations

import hashlib
from http import HTTPStatus

import pytest
from pydicom.uid import generate_uid

from studies.models import Instance
from tenants.models import AuditEvent, Clinic
from tests.dicom_files import write_instance
from tests.factories import token_for
from tests.studies.dicomweb_support import multipart_body

BASE = "/dicomweb/clinic-a/"
FAILED, REFERENCED, RETRIEVE_URL = "00081198", "00081199", "00081190"


@pytest.fixture
def api(client, clinic):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(clinic, role='uploader')}"
    return client


@pytest.fixture
def files(tmp_path):
    study_uid, series_uid = generate_uid(), generate_uid()
    return [
        write_instance(tmp_path, study_uid=study_uid, series_uid=series_uid, instance_number=n) for n in (1, 2, 3)
    ]


def _post(client, paths, url=BASE + "studies", **extra):
    body, content_type = multipart_body(paths)
    return client.generic("POST", url, body, content_type=content_type, **extra)


def _reasons(response):
    return [item["00081197"]["Value"][0] for item in response.json()[FAILED].get("Value", [])]


def test_several_instances_are_stored_in_one_request(api, files):
    response = _post(api, files)

    assert response.status_code == HTTPStatus.OK
    assert response["Content-Type"] == "application/dicom+json"
    body = response.json()
    referenced = body[REFERENCED]["Value"]
    assert len(referenced) == 3
    assert "Value" not in body[FAILED]
    assert Instance.objects.count() == 3
    instance = Instance.objects.get(instance_number=1)
    assert {"00081150": {"vr": "UI", "Value": [instance.sop_class_uid]},
            "00081155": {"vr": "UI", "Value": [instance.sop_instance_uid]}}.items() <= referenced[0].items()
    study_uid = instance.series.study.study_instance_uid
    assert referenced[0][RETRIEVE_URL]["Value"][0].endswith(
        f"studies/{study_uid}/series/{instance.series.series_instance_uid}/instances/{instance.sop_instance_uid}"
    )
    assert body[RETRIEVE_URL]["Value"] == [f"http://testserver{BASE}studies/{study_uid}"]


def test_storing_the_same_instance_again_succeeds_once_stored(api, files):
    _post(api, files[:1])

    response = _post(api, files[:1])

    assert response.status_code == HTTPStatus.OK
    assert Instance.objects.count() == 1


def test_a_conflicting_instance_fails_with_0111_and_409(api, files, tmp_path):
    _post(api, files[:1])
    first = Instance.objects.get()
    changed = write_instance(tmp_path / "other", study_uid=first.series.study.study_instance_uid,
                             series_uid=first.series.series_instance_uid, sop_uid=first.sop_instance_uid,
                             instance_number=99)

    response = _post(api, [changed])

    assert response.status_code == HTTPStatus.CONFLICT
    assert _reasons(response) == [0x0111]
    assert response.json()[FAILED]["Value"][0]["00081155"]["Value"] == [first.sop_instance_uid]
    assert Instance.objects.get().instance_number == 1


def test_a_part_that_is_not_dicom_fails_with_c000_and_the_rest_is_stored(api, files, tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not a DICOM file" * 10)

    response = _post(api, [files[0], junk])

    assert response.status_code == HTTPStatus.ACCEPTED
    assert _reasons(response) == [0xC000]
    assert len(response.json()[REFERENCED]["Value"]) == 1
    assert Instance.objects.count() == 1


def test_all_invalid_is_409(api, tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\x00" * 300)

    response = _post(api, [junk])

    assert response.status_code == HTTPStatus.CONFLICT
    assert _reasons(response) == [0xC000]


def test_over_quota_fails_with_a700_and_413(api, clinic, files):
    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=1000)

    response = _post(api, files[:2])

    assert response.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert _reasons(response) == [0xA700, 0xA700]
    assert not Instance.objects.exists()


def test_storing_into_a_named_study_refuses_instances_of_another_study(api, files, tmp_path):
    study_uid = generate_uid()
    stray = write_instance(tmp_path / "stray", study_uid=generate_uid(), series_uid=generate_uid())
    matching = write_instance(tmp_path / "match", study_uid=study_uid, series_uid=generate_uid())

    response = _post(api, [matching, stray], url=f"{BASE}studies/{study_uid}")

    assert response.status_code == HTTPStatus.ACCEPTED
    assert _reasons(response) == [0xC409]
    assert Instance.objects.get().series.study.study_instance_uid == study_uid


def test_other_media_types_are_unsupported(api, files):
    response = api.post(BASE + "studies", files[0].read_bytes(), content_type="application/dicom")
    json_parts = api.generic("POST", BASE + "studies", b"--b\r\n\r\n{}\r\n--b--\r\n",
                             content_type='multipart/related; type="application/dicom+json"; boundary=b')

    assert response.status_code == HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    assert json_parts.status_code == HTTPStatus.UNSUPPORTED_MEDIA_TYPE


def test_a_truncated_body_is_a_bad_request(api, files):
    body, content_type = multipart_body(files[:1])

    response = api.generic("POST", BASE + "studies", body[:-40], content_type=content_type)

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["error"] == "invalid_multipart"


def test_store_is_audited_per_request(api, files):
    _post(api, files)

    event = AuditEvent.objects.get(action="dicomweb.store")
    assert event.details == {"stored": 3, "failed": 0}


def test_billing_token_cannot_store(client, clinic, files):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(clinic, role='billing')}"

    response = _post(client, files)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert not Instance.objects.exists()


def test_outsider_cannot_store_into_our_clinic(client, other_clinic, outsider, files):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(other_clinic)}"

    response = _post(client, files)

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert not Instance.objects.exists()


def test_session_store_needs_the_csrf_token(client, clinician, files):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(clinician)

    response = _post(strict, files)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert not Instance.objects.exists()


def test_parts_are_streamed_to_disk_across_read_boundaries(api, tmp_path, monkeypatch):
    """A body much larger than one read chunk, with parts straddling chunk edges, stores intact."""
    from studies.dicomweb import multipart

    study_uid, series_uid = generate_uid(), generate_uid()
    paths = [write_instance(tmp_path, source="MR_small.dcm", study_uid=study_uid, series_uid=series_uid,
                            instance_number=n) for n in range(1, 30)]
    monkeypatch.setattr(multipart, "CHUNK", 4093)

    response = _post(api, paths)

    assert response.status_code == HTTPStatus.OK
    assert Instance.objects.count() == 29
    assert {i.sha256 for i in Instance.objects.all()} == {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}

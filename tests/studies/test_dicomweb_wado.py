"""WADO-RS: instances, metadata, frames, rendered images, thumbnails and bulk data."""

from __future__ import annotations

import io
from http import HTTPStatus

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.uid import generate_uid

from studies.browse import services
from studies.models import Study
from tenants.models import AuditEvent
from tests.dicom_files import write_instance
from tests.factories import ingest_files, token_for
from tests.studies.dicomweb_support import multipart_parts

BASE = "/dicomweb/clinic-a/"
ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture(autouse=True)
def _fresh_cache():
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def study(clinic, tmp_path):
    """One study: a CT series of two images, and a JPEG 2000 (lossless) MR image in a second series."""
    study_uid, ct, mr = generate_uid(), generate_uid(), generate_uid()
    paths = [write_instance(tmp_path, study_uid=study_uid, series_uid=ct, instance_number=n) for n in (1, 2)]
    paths.append(write_instance(tmp_path, source="MR_small_jp2klossless.dcm", study_uid=study_uid, series_uid=mr,
                                series_number=2, modality="MR"))
    instances = ingest_files(clinic, paths)
    return {"uid": study_uid, "ct": ct, "mr": mr, "paths": paths, "instances": instances}


@pytest.fixture
def api(client, clinic):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(clinic)}"
    return client


def _instance_url(study, index):
    instance = study["instances"][index]
    return f"{BASE}studies/{study['uid']}/series/{instance.series.series_instance_uid}/instances/{instance.sop_instance_uid}"


def _body(response):
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_instance_is_retrieved_byte_for_byte(api, study):
    response = api.get(_instance_url(study, 0), HTTP_ACCEPT=ANY_SYNTAX)

    assert response.status_code == HTTPStatus.OK
    assert response["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert multipart_parts(_body(response), response["Content-Type"]) == [study["paths"][0].read_bytes()]


def test_study_is_retrieved_in_series_and_instance_order(api, study):
    response = api.get(f"{BASE}studies/{study['uid']}", HTTP_ACCEPT=ANY_SYNTAX)

    parts = multipart_parts(_body(response), response["Content-Type"])
    assert parts == [p.read_bytes() for p in study["paths"]]


def test_series_is_retrieved_with_the_stored_syntax_asked_for(api, study):
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'

    response = api.get(f"{BASE}studies/{study['uid']}/series/{study['ct']}", HTTP_ACCEPT=accept)

    assert len(multipart_parts(_body(response), response["Content-Type"])) == 2


def test_another_transfer_syntax_is_not_acceptable(api, study):
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'

    response = api.get(_instance_url(study, 0), HTTP_ACCEPT=accept)

    assert response.status_code == HTTPStatus.NOT_ACCEPTABLE
    assert "transfer-syntax=*" in response.json()["message"]


def test_study_metadata_has_every_instance_with_bulk_data_uris(api, study):
    response = api.get(f"{BASE}studies/{study['uid']}/metadata")

    assert response["Content-Type"] == "application/dicom+json"
    items = response.json()
    assert [i["00080018"]["Value"][0] for i in items] == [i.sop_instance_uid for i in study["instances"]]
    pixel = items[0]["7FE00010"]
    assert pixel["BulkDataURI"] == "http://testserver" + _instance_url(study, 0) + "/bulkdata/7FE00010"
    assert items[0]["00100010"]["Value"] == [{"Alphabetic": "DOE^JANE"}]


def test_series_and_instance_metadata_are_narrowed(api, study):
    series = api.get(f"{BASE}studies/{study['uid']}/series/{study['mr']}/metadata").json()
    instance = api.get(_instance_url(study, 1) + "/metadata").json()

    assert len(series) == 1 and series[0]["0020000E"]["Value"] == [study["mr"]]
    assert [i["00080018"]["Value"][0] for i in instance] == [study["instances"][1].sop_instance_uid]


def test_bulk_data_uri_returns_the_pixel_data(api, study):
    uri = api.get(_instance_url(study, 0) + "/metadata").json()[0]["7FE00010"]["BulkDataURI"]

    response = api.get(uri.removeprefix("http://testserver"))

    [data] = multipart_parts(response.content, response["Content-Type"])
    assert data == dcmread(study["paths"][0]).PixelData


def test_native_frame_is_returned_uncompressed(api, study):
    response = api.get(_instance_url(study, 0) + "/frames/1")

    assert response["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
    [frame] = multipart_parts(response.content, response["Content-Type"])
    assert frame == dcmread(study["paths"][0]).PixelData


def test_compressed_frame_is_decoded_unless_the_stored_syntax_is_accepted(api, study):
    url = _instance_url(study, 2) + "/frames/1"
    source = dcmread(study["paths"][2])

    decoded = api.get(url, HTTP_ACCEPT='multipart/related; type="application/octet-stream"')
    stored = api.get(url, HTTP_ACCEPT='multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90')

    [raw] = multipart_parts(decoded.content, decoded["Content-Type"])
    assert np.array_equal(np.frombuffer(raw, dtype="<i2").reshape(64, 64), source.pixel_array)
    [codestream] = multipart_parts(stored.content, stored["Content-Type"])
    assert stored["Content-Type"].startswith('multipart/related; type="image/jp2"')
    assert codestream.rstrip(b"\x00") in source.PixelData


def test_missing_frame_is_not_found(api, study):
    response = api.get(_instance_url(study, 0) + "/frames/2")

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert "Frame 2 does not exist" in response.json()["message"]


def test_rendered_instance_is_a_jpeg_by_default(api, study):
    response = api.get(_instance_url(study, 0) + "/rendered")

    assert response["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).size == (128, 128)


def test_rendered_png_follows_window_and_viewport(api, study):
    url = _instance_url(study, 0) + "/rendered"

    narrow = api.get(url, {"window": "0,1,linear"}, HTTP_ACCEPT="image/png")
    wide = api.get(url, {"window": "0,100000", "viewport": "64,64"}, HTTP_ACCEPT="image/png")

    assert narrow["Content-Type"] == "image/png"
    narrow_image, wide_image = (np.asarray(Image.open(io.BytesIO(r.content))) for r in (narrow, wide))
    assert wide_image.shape == (64, 64)
    # A one-unit window makes an almost black-and-white image; a huge one a flat mid-grey.
    assert set(np.unique(narrow_image)) <= {0, 255}
    assert wide_image.std() < 5


def test_rendered_frame_and_compressed_instance(api, study):
    response = api.get(_instance_url(study, 2) + "/frames/1/rendered", {"accept": "image/png"})

    assert Image.open(io.BytesIO(response.content)).size == (64, 64)


def test_rendered_series_is_multipart(api, study):
    response = api.get(f"{BASE}studies/{study['uid']}/series/{study['ct']}/rendered")

    assert len(multipart_parts(response.content, response["Content-Type"])) == 2


def test_bad_window_is_a_bad_request(api, study):
    response = api.get(_instance_url(study, 0) + "/rendered", {"window": "wide"})

    assert response.status_code == HTTPStatus.BAD_REQUEST


def test_thumbnails_at_every_level(api, study):
    for url in (f"{BASE}studies/{study['uid']}", f"{BASE}studies/{study['uid']}/series/{study['mr']}",
                _instance_url(study, 0)):
        response = api.get(url + "/thumbnail", {"viewport": "32,32"})

        assert response.status_code == HTTPStatus.OK
        assert max(Image.open(io.BytesIO(response.content)).size) == 32


def test_retrieve_is_audited_once_per_study_not_per_frame(api, study):
    for _ in range(3):
        api.get(_instance_url(study, 0) + "/frames/1")
    api.get(f"{BASE}studies/{study['uid']}/metadata")

    events = AuditEvent.objects.filter(action="dicomweb.retrieve")
    assert events.count() == 1
    assert events.get().object_id == str(study["instances"][0].series.study.uuid)


def test_unknown_study_is_404(api, study):
    assert api.get(f"{BASE}studies/1.2.3.4/metadata").status_code == HTTPStatus.NOT_FOUND
    assert api.get(f"{BASE}studies/{study['uid']}/series/1.2.3/metadata").status_code == HTTPStatus.NOT_FOUND


def test_outsider_gets_404_through_our_clinic_and_through_its_own(client, outsider, other_clinic, study):
    client.force_login(outsider)
    ours = client.get(f"{BASE}studies/{study['uid']}/metadata")
    client.logout()
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(other_clinic)}"

    theirs = [
        client.get(f"/dicomweb/clinic-b/studies/{study['uid']}/metadata"),
        client.get(f"/dicomweb/clinic-b/studies/{study['uid']}", HTTP_ACCEPT=ANY_SYNTAX),
        client.get(_instance_url(study, 0).replace("clinic-a", "clinic-b") + "/frames/1"),
        client.get(_instance_url(study, 0).replace("clinic-a", "clinic-b") + "/rendered"),
    ]

    assert ours.status_code == HTTPStatus.NOT_FOUND
    assert [r.status_code for r in theirs] == [HTTPStatus.NOT_FOUND] * 4


def test_billing_token_cannot_retrieve(client, clinic, study):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(clinic, role='billing')}"

    response = client.get(f"{BASE}studies/{study['uid']}/metadata")

    assert response.status_code == HTTPStatus.FORBIDDEN


def test_a_missing_object_is_an_error_answer_not_a_cut_off_stream(api, study, settings):
    from pathlib import Path
    from urllib.parse import urlparse

    for url in (settings.PRIMARY_STORE_URL, settings.REPLICA_STORE_URL):
        target = Path(urlparse(url).path) / study["instances"][0].object_key
        target.unlink(missing_ok=True)

    response = api.get(_instance_url(study, 0), HTTP_ACCEPT=ANY_SYNTAX)

    assert response.status_code >= HTTPStatus.INTERNAL_SERVER_ERROR
    assert response.json()["error"] == "object_missing"


def test_large_metadata_is_gzipped_for_clients_that_accept_it(api, study, monkeypatch):
    import gzip
    import json

    from studies.dicomweb import views

    monkeypatch.setattr(views, "GZIP_MIN_BYTES", 1)
    url = f"{BASE}studies/{study['uid']}/metadata"

    plain = api.get(url)
    zipped = api.get(url, HTTP_ACCEPT_ENCODING="gzip, deflate")

    assert "Content-Encoding" not in plain
    assert zipped["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(zipped.content)) == plain.json()


def _ct_study(clinic, tmp_path, count):
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = [
        write_instance(tmp_path, study_uid=study_uid, series_uid=series_uid, instance_number=n)
        for n in range(1, count + 1)
    ]
    ingest_files(clinic, paths)
    return study_uid, paths


def _retrieve_statements(api, study_uid):
    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from studies.archive import keys

    keys.key_cache_clear()  # the clinic key is looked up in this request, as after a restart
    cache.clear()  # and its audit entry is written (one per caller, study and minute)
    with CaptureQueriesContext(connection) as queries:
        response = api.get(f"{BASE}studies/{study_uid}", HTTP_ACCEPT=ANY_SYNTAX)
        body = _body(response)
    return len(queries), body, response


@pytest.mark.postgresql
def test_study_retrieve_runs_the_same_few_statements_whatever_its_size(api, clinic, tmp_path):
    small_uid, small_paths = _ct_study(clinic, tmp_path / "small", 2)
    large_uid, large_paths = _ct_study(clinic, tmp_path / "large", 9)
    _retrieve_statements(api, small_uid)  # what only a caller's first request does (its audit chain start)

    small_count, small_body, small = _retrieve_statements(api, small_uid)
    large_count, large_body, large = _retrieve_statements(api, large_uid)

    assert sorted(multipart_parts(large_body, large["Content-Type"])) == sorted(p.read_bytes() for p in large_paths)
    assert len(multipart_parts(small_body, small["Content-Type"])) == len(small_paths)
    assert large_count == small_count
    assert large_count <= 12


def test_study_retrieve_never_opens_a_database_connection_in_the_read_ahead_thread(api, clinic, tmp_path):
    import threading

    from django.db.backends.signals import connection_created

    study_uid, paths = _ct_study(clinic, tmp_path, 5)
    opened_elsewhere: list[str] = []

    def created(sender, connection, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            opened_elsewhere.append(threading.current_thread().name)

    connection_created.connect(created)
    try:
        _, body, response = _retrieve_statements(api, study_uid)
    finally:
        connection_created.disconnect(created)

    assert sorted(multipart_parts(body, response["Content-Type"])) == sorted(p.read_bytes() for p in paths)
    assert opened_elsewhere == []


def test_study_retrieve_writes_one_audit_entry(api, clinic, tmp_path):
    study_uid, _ = _ct_study(clinic, tmp_path, 4)
    before = AuditEvent.objects.filter(action="dicomweb.retrieve").count()

    _body(api.get(f"{BASE}studies/{study_uid}", HTTP_ACCEPT=ANY_SYNTAX))

    assert AuditEvent.objects.filter(action="dicomweb.retrieve").count() == before + 1


def test_a_frame_bulk_data_or_rendered_image_is_found_only_under_its_own_study_and_series_not_in_the_trash(
    api, clinic, study
):
    instance = study["instances"][0]
    tails = ("/frames/1", "/bulkdata/7FE00010", "/rendered")
    elsewhere = [
        _instance_url(study, 0).replace(instance.series.series_instance_uid, study["mr"]),  # another series
        _instance_url(study, 0).replace(study["uid"], generate_uid()),  # another study
    ]

    assert [api.get(_instance_url(study, 0) + tail).status_code for tail in tails] == [HTTPStatus.OK] * 3
    assert [api.get(url + tail).status_code for url in elsewhere for tail in tails] == [HTTPStatus.NOT_FOUND] * 6
    services.study_delete(clinic=clinic, study=Study.objects.get(study_instance_uid=study["uid"]))
    assert [api.get(_instance_url(study, 0) + tail).status_code for tail in tails] == [HTTPStatus.NOT_FOUND] * 3

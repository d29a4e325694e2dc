"""WADO-RS converts instances and frames to the transfer syntax asked for (PS3.18 8.7.3), losslessly."""

from __future__ import annotations

import io
from http import HTTPStatus

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.dicom_files import write_instance
from tests.factories import ingest_files, token_for
from tests.studies.dicomweb_support import multipart_parts

BASE = "/dicomweb/clinic-a/"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def _accept(syntax: str | None) -> str:
    accept = 'multipart/related; type="application/dicom"'
    return accept if syntax is None else f"{accept}; transfer-syntax={syntax}"


@pytest.fixture(autouse=True)
def _fresh_cache():
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def study(clinic, tmp_path):
    """One study: a JPEG 2000 lossless MR image, a JPEG baseline (lossy) RGB image and an uncompressed CT."""
    study_uid = generate_uid()
    sources = ["MR_small_jp2klossless.dcm", "SC_rgb_jpeg_dcmtk.dcm", "CT_small.dcm"]
    paths = [
        write_instance(tmp_path, source=source, study_uid=study_uid, series_uid=generate_uid(), series_number=n)
        for n, source in enumerate(sources, start=1)
    ]
    instances = ingest_files(clinic, paths)
    return {"uid": study_uid, "paths": paths, "instances": instances}


@pytest.fixture
def api(client, clinic):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(clinic)}"
    return client


def _url(study, index):
    instance = study["instances"][index]
    return (
        f"{BASE}studies/{study['uid']}/series/{instance.series.series_instance_uid}"
        f"/instances/{instance.sop_instance_uid}"
    )


def _parts(response):
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return multipart_parts(body, response["Content-Type"])


def test_jpeg2000_instance_is_sent_in_explicit_little_endian_when_asked(api, study):
    response = api.get(_url(study, 0), HTTP_ACCEPT=_accept(EXPLICIT_LE))

    assert response.status_code == HTTPStatus.OK
    [part] = _parts(response)
    sent = dcmread(io.BytesIO(part))
    assert sent.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(sent.pixel_array, dcmread(study["paths"][0]).pixel_array)
    assert sent.SOPInstanceUID == study["instances"][0].sop_instance_uid


@pytest.mark.parametrize("accept", [_accept(None), "*/*", ""])
def test_explicit_little_endian_is_the_default(api, study, accept):
    headers = {"HTTP_ACCEPT": accept} if accept else {}

    response = api.get(_url(study, 0), **headers)

    assert response.status_code == HTTPStatus.OK
    [part] = _parts(response)
    assert dcmread(io.BytesIO(part)).file_meta.TransferSyntaxUID == EXPLICIT_LE


def test_any_syntax_still_sends_the_stored_bytes(api, study):
    response = api.get(_url(study, 0), HTTP_ACCEPT=_accept("*"))

    assert _parts(response) == [study["paths"][0].read_bytes()]


def test_study_is_converted_instance_by_instance(api, study):
    response = api.get(f"{BASE}studies/{study['uid']}", HTTP_ACCEPT=_accept(EXPLICIT_LE))

    parts = _parts(response)
    sent = [dcmread(io.BytesIO(part)) for part in parts]
    assert [ds.file_meta.TransferSyntaxUID for ds in sent] == [EXPLICIT_LE] * 3
    # The uncompressed CT is already in the asked syntax: its bytes go out as stored.
    assert parts[2] == study["paths"][2].read_bytes()
    assert np.array_equal(sent[1].pixel_array, dcmread(study["paths"][1]).pixel_array)


def test_lossy_instance_is_decoded_and_keeps_its_lossy_mark(api, study):
    response = api.get(_url(study, 1), HTTP_ACCEPT=_accept(EXPLICIT_LE))

    [part] = _parts(response)
    assert dcmread(io.BytesIO(part)).LossyImageCompression == "01"


def test_uncompressed_instance_is_compressed_losslessly_when_asked(api, study):
    response = api.get(_url(study, 2), HTTP_ACCEPT=_accept(J2K_LOSSLESS))

    [part] = _parts(response)
    sent = dcmread(io.BytesIO(part))
    assert sent.file_meta.TransferSyntaxUID == J2K_LOSSLESS
    assert np.array_equal(sent.pixel_array, dcmread(study["paths"][2]).pixel_array)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91"])
def test_lossy_compression_is_not_acceptable(api, study, syntax):
    response = api.get(_url(study, 0), HTTP_ACCEPT=_accept(syntax))

    assert response.status_code == HTTPStatus.NOT_ACCEPTABLE


def test_a_later_range_is_used_when_the_first_cannot_be_served(api, study):
    accept = f"{_accept('1.2.840.10008.1.2.4.50')}, {_accept(EXPLICIT_LE)};q=0.5"

    response = api.get(_url(study, 0), HTTP_ACCEPT=accept)

    [part] = _parts(response)
    assert dcmread(io.BytesIO(part)).file_meta.TransferSyntaxUID == EXPLICIT_LE


@pytest.mark.parametrize(
    ("media_type", "syntax"),
    [("image/jp2", J2K_LOSSLESS), ("image/jls", "1.2.840.10008.1.2.4.80"), ("image/dicom-rle", "1.2.840.10008.1.2.5")],
)
def test_uncompressed_frame_is_encoded_losslessly_in_the_media_type_asked(api, study, media_type, syntax):
    response = api.get(_url(study, 2) + "/frames/1", HTTP_ACCEPT=f'multipart/related; type="{media_type}"')

    assert response.status_code == HTTPStatus.OK
    assert response["Content-Type"].startswith(f'multipart/related; type="{media_type}"')
    [frame] = multipart_parts(response.content, response["Content-Type"])
    decoded = _decode_frame(study["paths"][2], frame, syntax)
    assert np.array_equal(decoded, dcmread(study["paths"][2]).pixel_array)


def test_jpeg2000_frame_is_decoded_for_octet_stream(api, study):
    response = api.get(_url(study, 0) + "/frames/1", HTTP_ACCEPT='multipart/related; type="application/octet-stream"')

    [frame] = multipart_parts(response.content, response["Content-Type"])
    source = dcmread(study["paths"][0])
    assert np.array_equal(np.frombuffer(frame, dtype="<i2").reshape(source.Rows, source.Columns), source.pixel_array)


def test_lossy_frame_is_not_encoded_as_jpeg_again(api, study):
    response = api.get(_url(study, 2) + "/frames/1", HTTP_ACCEPT='multipart/related; type="image/jpeg"')

    assert response.status_code == HTTPStatus.NOT_ACCEPTABLE


def test_outsider_gets_404_for_a_converted_instance(client, other_clinic, study):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(other_clinic)}"

    response = client.get(_url(study, 0), HTTP_ACCEPT=_accept(EXPLICIT_LE))

    assert response.status_code == HTTPStatus.NOT_FOUND


def _decode_frame(source_path, frame: bytes, syntax: str) -> np.ndarray:
    """Wrap one encoded frame back into the source's header and decode it with pydicom."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    ds = dcmread(source_path)
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds.pixel_array


def test_instance_that_cannot_be_decoded_goes_out_as_stored_by_default(api, study, monkeypatch):
    from studies import transcoding

    # As for a video or a syntax without a decoder here.
    monkeypatch.setattr(transcoding, "can_decode", lambda syntax: syntax in transcoding.UNCOMPRESSED)

    default = api.get(_url(study, 0), HTTP_ACCEPT=_accept(None))
    named = api.get(_url(study, 0), HTTP_ACCEPT=_accept(EXPLICIT_LE))

    assert _parts(default) == [study["paths"][0].read_bytes()]
    assert named.status_code == HTTPStatus.NOT_ACCEPTABLE

"""DICOMweb against a running server with a real third-party client (the dicomweb-client package)."""

from __future__ import annotations

import io
from http import HTTPStatus

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from tests.dicom_files import write_instance
from tests.factories import token_for
from tests.studies.dicomweb_support import multipart_body, multipart_parts

# Serialized rollback keeps the seeded plans that clinic creation needs after a transactional flush.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def files(tmp_path):
    """A study of two series: three CT images and one JPEG 2000 MR image."""
    study_uid, ct, mr = generate_uid(), generate_uid(), generate_uid()
    paths = [write_instance(tmp_path, study_uid=study_uid, series_uid=ct, instance_number=n) for n in (1, 2, 3)]
    paths.append(write_instance(tmp_path, source="MR_small_jp2klossless.dcm", study_uid=study_uid, series_uid=mr,
                                series_number=2, modality="MR"))
    return {"study": study_uid, "ct": ct, "mr": mr, "paths": paths}


@pytest.fixture
def dicomweb(live_server, clinic):
    token = token_for(clinic)
    return DICOMwebClient(url=f"{live_server.url}/dicomweb/clinic-a", headers={"Authorization": f"Bearer {token}"})


def test_third_party_client_stores_finds_and_retrieves_a_study(dicomweb, files, live_server):
    datasets = [dcmread(p) for p in files["paths"]]

    stored = dicomweb.store_instances(datasets=datasets)

    assert len(stored.ReferencedSOPSequence) == 4
    assert "FailedSOPSequence" not in stored or not stored.FailedSOPSequence

    # Search at every level.
    [study] = dicomweb.search_for_studies(search_filters={"PatientName": "DOE*"})
    assert study["0020000D"]["Value"] == [files["study"]]
    assert dicomweb.search_for_studies(search_filters={"StudyDate": "20250101-"}) == []
    series = dicomweb.search_for_series(files["study"])
    assert [s["0020000E"]["Value"][0] for s in series] == [files["ct"], files["mr"]]
    assert len(dicomweb.search_for_series(search_filters={"Modality": "MR"})) == 1
    instances = dicomweb.search_for_instances(files["study"], files["ct"])
    assert [i["00200013"]["Value"][0] for i in instances] == [1, 2, 3]
    assert len(dicomweb.search_for_instances(search_filters={"StudyInstanceUID": files["study"]})) == 4

    # Retrieve instance, series and study; compare with what was sent.
    first = datasets[0]
    retrieved = dicomweb.retrieve_instance(files["study"], files["ct"], first.SOPInstanceUID)
    assert retrieved.PixelData == first.PixelData
    assert retrieved.PatientName == "DOE^JANE"
    assert len(dicomweb.retrieve_series(files["study"], files["ct"])) == 3
    assert sorted(d.SOPInstanceUID for d in dicomweb.retrieve_study(files["study"])) == sorted(
        d.SOPInstanceUID for d in datasets
    )

    # Metadata, frames and rendered images.
    metadata = dicomweb.retrieve_study_metadata(files["study"])
    assert len(metadata) == 4
    assert all("BulkDataURI" in item["7FE00010"] for item in metadata)
    [frame] = dicomweb.retrieve_instance_frames(files["study"], files["ct"], first.SOPInstanceUID, frame_numbers=[1])
    assert frame == first.PixelData
    mr = datasets[3]
    [mr_frame] = dicomweb.retrieve_instance_frames(files["study"], files["mr"], mr.SOPInstanceUID,
                                                   frame_numbers=[1])
    # The client accepts the frame in any transfer syntax: it comes as stored, the JPEG 2000 codestream itself.
    [stored_frame] = generate_frames(mr.PixelData, number_of_frames=1)
    assert bytes(mr_frame).rstrip(b"\x00") == stored_frame.rstrip(b"\x00")
    jpeg = dicomweb.retrieve_instance_rendered(files["study"], files["ct"], first.SOPInstanceUID,
                                               media_types=("image/jpeg",), params={"viewport": "64,64"})
    assert Image.open(io.BytesIO(jpeg)).size == (64, 64)
    png = dicomweb.retrieve_instance_rendered(files["study"], files["ct"], first.SOPInstanceUID,
                                              media_types=("image/png",))
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_retrieved_instance_bytes_equal_the_stored_file(dicomweb, files, live_server):
    body, content_type = multipart_body(files["paths"][:1])
    auth = dict(dicomweb._session.headers)
    base = f"{live_server.url}/dicomweb/clinic-a/studies"
    sop = dcmread(files["paths"][0]).SOPInstanceUID

    stored = requests.post(base, data=body, headers={**auth, "Content-Type": content_type}, timeout=30)
    response = requests.get(
        f"{base}/{files['study']}/series/{files['ct']}/instances/{sop}", timeout=30,
        headers={**auth, "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )

    assert stored.status_code == HTTPStatus.OK
    [part] = multipart_parts(response.content, response.headers["Content-Type"])
    assert part == files["paths"][0].read_bytes()


def test_cors_preflight_allows_a_configured_origin(live_server, settings, clinic):
    settings.CORS_ALLOWED_ORIGINS = ["https://viewer.example"]
    url = f"{live_server.url}/dicomweb/clinic-a/studies"
    preflight = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}

    allowed = requests.options(url, headers={"Origin": "https://viewer.example", **preflight}, timeout=10)
    refused = requests.options(url, headers={"Origin": "https://evil.example", **preflight}, timeout=10)
    answer = requests.get(url, headers={"Origin": "https://viewer.example",
                                        "Authorization": f"Bearer {token_for(clinic)}"}, timeout=10)

    assert allowed.status_code == HTTPStatus.OK
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
    assert "authorization" in allowed.headers["Access-Control-Allow-Headers"].lower()
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert answer.headers["Access-Control-Allow-Origin"] == "https://viewer.example"


def test_cors_is_not_opened_outside_dicomweb(live_server, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://viewer.example"]

    response = requests.options(f"{live_server.url}/api/v1/schema/", timeout=10, headers={
        "Origin": "https://viewer.example", "Access-Control-Request-Method": "GET"})

    assert "Access-Control-Allow-Origin" not in response.headers

"""Orthanc (Debian's, with its DICOMweb plugin, default settings) as a modality, router and client."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import requests
from pydicom import dcmread

from studies.ingest import instance_ingest
from studies.models import Instance
from tests.dicom_files import write_study
from tests.factories import token_for
from tests.peers import ORTHANC_AE, requires_orthanc, running_orthanc
from tests.studies.dimse_support import register_node, running_scp
from tests.studies.upload_memory_support import gunicorn_server, server_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, requires_orthanc, pytest.mark.usefixtures("tasks_run_inline")]

SAMPLES = ["CT_small.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"]


@pytest.fixture
def scp_port():
    with running_scp() as port:
        yield port


@pytest.fixture
def orthanc(clinic, scp_port, live_server, tmp_path):
    url = f"{live_server.url}/dicomweb/{clinic.slug}/"
    with running_orthanc(
        tmp_path / "orthanc", portal_ae=clinic.ae_title, portal_dicom_port=scp_port, portal_dicomweb_url=url,
        token=token_for(clinic, role="clinician"),
    ) as peer:  # fmt: skip
        # Orthanc calls in (C-STORE, C-FIND, C-MOVE) and is a C-MOVE destination.
        register_node(clinic, ae_title=ORTHANC_AE, port=peer.dicom_port)
        yield peer


@pytest.fixture
def files(tmp_path):
    return write_study(tmp_path / "originals", samples=SAMPLES)


@pytest.fixture
def archived(clinic, files):
    """The study already in the portal (stored by some other sender)."""
    for path in files.files:
        instance_ingest(clinic=clinic, source_path=str(path), source="test")
    return files


def _portal_uids(clinic) -> set[str]:
    return set(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", flat=True))


def test_orthanc_sends_a_study_by_c_store(clinic, orthanc, files):
    ids = orthanc.upload(files.files)

    orthanc.post("/modalities/portal/store", {"Resources": ids, "Synchronous": True})

    assert _portal_uids(clinic) == set(files.sop_uids)


def test_orthanc_sends_a_study_by_stow_with_its_defaults(clinic, files, settings, tmp_path):
    # Orthanc's STOW-RS body is chunked; the web server of the production set-up (gunicorn) decodes that,
    # Django's test server does not, so the portal runs under gunicorn here, on the test database.
    env = server_env(settings)
    token = token_for(clinic, role="clinician")
    with gunicorn_server(env) as (port, _pid):
        url = f"http://127.0.0.1:{port}/dicomweb/{clinic.slug}/"
        with running_orthanc(
            tmp_path / "orthanc", portal_ae=clinic.ae_title, portal_dicomweb_url=url, token=token
        ) as orthanc:
            orthanc.upload(files.files)
            [study_id] = orthanc.get("/studies")

            orthanc.post("/dicom-web/servers/portal/stow", {"Resources": [study_id], "Synchronous": True})

    assert _portal_uids(clinic) == set(files.sop_uids)


@pytest.mark.parametrize("level", ["Patient", "Study", "Series", "Instance"])
def test_orthanc_finds_the_study_at_every_level(orthanc, archived, level):
    query = {"PatientID": archived.patient_id}
    if level in ("Series", "Instance"):
        query["StudyInstanceUID"] = archived.study_uid
    if level == "Instance":
        query["SeriesInstanceUID"] = archived.series_uids[1]
        query["SOPInstanceUID"] = ""

    found = orthanc.post("/modalities/portal/query", {"Level": level, "Query": query})
    answers = orthanc.get(f"/queries/{found['ID']}/answers?expand&simplify")

    expected = {"Patient": 1, "Study": 1, "Series": len(SAMPLES), "Instance": 1}[level]
    assert len(answers) == expected, orthanc.log_text()
    if level == "Instance":
        # Orthanc puts (0002,0003) in its identifier: it must not stop the match.
        assert answers[0]["SOPInstanceUID"] == archived.sop_uids[1]


def test_orthanc_retrieves_the_study_by_c_move(orthanc, archived):
    found = orthanc.post(
        "/modalities/portal/query", {"Level": "Study", "Query": {"StudyInstanceUID": archived.study_uid}}
    )

    orthanc.post(f"/queries/{found['ID']}/retrieve", {"TargetAet": ORTHANC_AE, "Synchronous": True})

    assert orthanc.instance_uids() == set(archived.sop_uids)
    # Sent as stored: same transfer syntax, same pixel bytes, same header. (Orthanc, like any DCMTK
    # store, rewrites the File Meta and writes encapsulated pixel data as OB where a sample had OW.)
    for path, uid in zip(archived.files, archived.sop_uids, strict=True):
        got, original = dcmread(io.BytesIO(orthanc.file_of(uid))), dcmread(path)
        assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert got.PixelData == original.PixelData
        del got.PixelData, original.PixelData
        assert got == original


def test_orthanc_retrieves_the_study_by_dicomweb(orthanc, archived):
    orthanc.post("/dicom-web/servers/portal/retrieve", {"Resources": [{"Study": archived.study_uid}]})

    assert orthanc.instance_uids() == set(archived.sop_uids), orthanc.log_text()
    for path, uid in zip(archived.files, archived.sop_uids, strict=True):
        got = dcmread(io.BytesIO(orthanc.file_of(uid)))
        assert np.array_equal(got.pixel_array, dcmread(path).pixel_array)


def test_orthanc_lists_the_portals_studies_by_qido(orthanc, archived):
    studies = orthanc.post("/dicom-web/servers/portal/get", {"Uri": "/studies"})

    assert [s["0020000D"]["Value"][0] for s in studies] == [archived.study_uid]


def test_orthanc_without_a_token_of_the_clinic_gets_nothing(clinic, other_clinic, scp_port, live_server, tmp_path):
    url = f"{live_server.url}/dicomweb/{clinic.slug}/"
    with running_orthanc(
        tmp_path / "outsider", portal_ae=clinic.ae_title, portal_dicom_port=scp_port, portal_dicomweb_url=url,
        token=token_for(other_clinic),
    ) as peer:  # fmt: skip
        response = requests.post(f"{peer.url}/dicom-web/servers/portal/get", json={"Uri": "/studies"}, timeout=60)

    assert response.status_code >= 400


def test_orthanc_gets_a_storage_commitment_report_once_images_are_backed_up(clinic, orthanc, files):
    ids = orthanc.upload(files.files)

    sent = orthanc.post("/modalities/portal/store", {"Resources": ids, "Synchronous": True, "StorageCommitment": True})
    report = _commitment_report(orthanc, sent["StorageCommitmentTransactionUID"])

    assert report["Status"] == "Success", report
    assert {uid for _, uid in _pairs(report["Success"])} == set(files.sop_uids)
    assert report["Failures"] == []


def test_orthanc_is_told_by_storage_commitment_that_an_instance_we_do_not_hold_failed(
    clinic, orthanc, archived, tmp_path
):
    unknown = write_study(tmp_path / "unknown")
    orthanc.upload([archived.files[0], unknown.files[0]])
    sop_class = str(dcmread(archived.files[0], stop_before_pixels=True).SOPClassUID)

    sent = orthanc.post(
        "/modalities/portal/storage-commitment",
        {"DicomInstances": [[sop_class, archived.sop_uids[0]], [sop_class, unknown.sop_uids[0]]]},
    )
    report = _commitment_report(orthanc, sent["ID"])

    assert report["Status"] == "Failure", report
    assert {uid for _, uid in _pairs(report["Success"])} == {archived.sop_uids[0]}
    assert [f["SOPInstanceUID"] for f in report["Failures"]] == [unknown.sop_uids[0]]


def _pairs(items):
    return [(item["SOPClassUID"], item["SOPInstanceUID"]) for item in items]


def _commitment_report(orthanc, transaction_uid: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        report = orthanc.get(f"/storage-commitment/{transaction_uid}")
        if report["Status"] != "Pending" or time.monotonic() > deadline:
            return report
        time.sleep(0.3)


def test_orthanc_accepting_only_uncompressed_syntaxes_gets_the_study_decoded_by_c_move(
    clinic, scp_port, archived, tmp_path
):
    uncompressed = {"AcceptedTransferSyntaxes": ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]}
    with running_orthanc(
        tmp_path / "strict", portal_ae=clinic.ae_title, portal_dicom_port=scp_port, extra_config=uncompressed
    ) as peer:
        register_node(clinic, ae_title=ORTHANC_AE, port=peer.dicom_port)
        found = peer.post(
            "/modalities/portal/query", {"Level": "Study", "Query": {"StudyInstanceUID": archived.study_uid}}
        )

        peer.post(f"/queries/{found['ID']}/retrieve", {"TargetAet": ORTHANC_AE, "Synchronous": True})

        assert peer.instance_uids() == set(archived.sop_uids), peer.log_text()
        for path, uid in zip(archived.files, archived.sop_uids, strict=True):
            got = dcmread(io.BytesIO(peer.file_of(uid)))
            assert got.file_meta.TransferSyntaxUID in uncompressed["AcceptedTransferSyntaxes"]
            assert np.array_equal(got.pixel_array, dcmread(path).pixel_array)

"""C-MOVE and C-GET from the archive, from DCMTK movescu/getscu and pynetdicom; bytes compared with the originals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
)

from studies.ingest import instance_ingest
from studies.models import Study
from tenants.models import AuditEvent
from tests.dicom_files import write_study
from tests.studies.dimse_support import (
    BYTE_EXACT_SAMPLES,
    HOST,
    MODALITY_AE,
    SAMPLES,
    VIEWER_AE,
    dataset_bytes,
    dcmtk,
    free_port,
    move,
    register_node,
    storage_received,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("tasks_run_inline")]


@pytest.fixture
def study(clinic, tmp_path):
    files = write_study(tmp_path / "originals", samples=BYTE_EXACT_SAMPLES)
    for path in files.files:
        instance_ingest(clinic=clinic, source_path=str(path), source="test")
    return files


def originals(study) -> dict[str, bytes]:
    return {uid: dataset_bytes(path) for uid, path in zip(study.sop_uids, study.files, strict=True)}


def received_files(folder: Path) -> dict[str, bytes]:
    return {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID): dataset_bytes(path)
            for path in folder.iterdir() if path.is_file()}


def test_pynetdicom_move_sends_the_study_byte_for_byte(clinic, scp_port, receiver, study):
    statuses = move(scp_port, clinic.ae_title, VIEWER_AE, QueryRetrieveLevel="STUDY",
                    StudyInstanceUID=study.study_uid)

    final = statuses[-1]
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == len(study.files)
    assert final.NumberOfFailedSuboperations == 0
    assert [s.Status for s in statuses[:-1]] == [0xFF00] * len(study.files)
    assert receiver.received == originals(study)


def test_movescu_moves_a_study_to_itself(clinic, scp_port, study, tmp_path):
    port = free_port()
    register_node(clinic, ae_title="MOVESCU", port=port)
    out = tmp_path / "moved"
    out.mkdir()

    result = dcmtk("movescu", "-v", "-aet", "MOVESCU", "-aem", "MOVESCU", "-aec", clinic.ae_title, "--port", port,
                   "+xa", "+B", "-od", out, "-S", "-k", "QueryRetrieveLevel=STUDY",
                   "-k", f"StudyInstanceUID={study.study_uid}", HOST, scp_port, check=True, cwd=out)

    assert received_files(out) == originals(study), result.stdout + result.stderr


def test_move_at_series_level_in_patient_root_sends_only_that_series(clinic, scp_port, receiver, study):
    statuses = move(scp_port, clinic.ae_title, VIEWER_AE, PatientRootQueryRetrieveInformationModelMove,
                    QueryRetrieveLevel="SERIES", PatientID=study.patient_id, StudyInstanceUID=study.study_uid,
                    SeriesInstanceUID=study.series_uids[1])

    assert statuses[-1].Status == 0x0000
    assert list(receiver.received) == [study.sop_uids[1]]


def test_move_to_an_unregistered_destination_answers_A801(clinic, scp_port, receiver, study):
    statuses = move(scp_port, clinic.ae_title, "NOBODY", QueryRetrieveLevel="STUDY", StudyInstanceUID=study.study_uid)

    assert [s.Status for s in statuses] == [0xA801]
    assert receiver.received == {}
    event = AuditEvent.objects.for_clinic(clinic).get(action="dimse.retrieve")
    assert event.result == "rejected"


def test_move_never_sends_another_clinics_instances(clinic, other_clinic, scp_port, receiver, tmp_path):
    theirs = write_study(tmp_path / "theirs")
    instance_ingest(clinic=other_clinic, source_path=str(theirs.files[0]), source="test")

    statuses = move(scp_port, clinic.ae_title, VIEWER_AE, QueryRetrieveLevel="STUDY",
                    StudyInstanceUID=theirs.study_uid)

    assert statuses[-1].Status == 0x0000
    assert statuses[-1].NumberOfCompletedSuboperations == 0
    assert receiver.received == {}


def test_move_skips_trashed_studies(clinic, scp_port, receiver, study):
    Study.objects.for_clinic(clinic).update(deleted_at="2025-01-01T00:00:00Z")

    move(scp_port, clinic.ae_title, VIEWER_AE, QueryRetrieveLevel="STUDY", StudyInstanceUID=study.study_uid)

    assert receiver.received == {}


def test_move_is_audited_with_study_ids_only(clinic, scp_port, receiver, study):
    move(scp_port, clinic.ae_title, VIEWER_AE, QueryRetrieveLevel="STUDY", StudyInstanceUID=study.study_uid)

    event = AuditEvent.objects.for_clinic(clinic).get(action="dimse.retrieve")
    assert event.details["operation"] == "C-MOVE"
    assert event.details["destination"] == VIEWER_AE
    assert event.details["instances"] == len(study.files)
    assert event.details["studies"] == [str(Study.objects.for_clinic(clinic).get().uuid)]


def test_pynetdicom_get_returns_the_study_byte_for_byte(clinic, scp_port, study):
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = {}
    for path in study.files:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
        roles[meta.MediaStorageSOPClassUID] = build_role(meta.MediaStorageSOPClassUID, scp_role=True)
    received: dict[str, bytes] = {}
    assoc = ae.associate(HOST, scp_port, ae_title=clinic.ae_title, ext_neg=list(roles.values()),
                         evt_handlers=[(evt.EVT_C_STORE, storage_received, [received])])
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study.study_uid

    statuses = [status for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]
    assoc.release()

    assert statuses[-1].Status == 0x0000
    assert statuses[-1].NumberOfCompletedSuboperations == len(study.files)
    assert received == originals(study)


def test_getscu_gets_a_study(clinic, scp_port, study, tmp_path):
    out = tmp_path / "got"
    out.mkdir()

    dcmtk("getscu", "-aet", MODALITY_AE, "-aec", clinic.ae_title, "+B", "-od", out, "-S",
          "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_uid}", HOST, scp_port,
          check=True, cwd=out)

    # getscu proposes uncompressed storage only (explicit VR first): uncompressed instances arrive
    # element for element the same, compressed ones decoded to the same pixels.
    got = {str(dcmread(path).SOPInstanceUID): path for path in out.iterdir()}
    originals_by_uid = dict(zip(study.sop_uids, study.files, strict=True))
    assert set(got) == set(study.sop_uids)
    for uid, path in got.items():
        original = originals_by_uid[uid]
        if dcmread(path).file_meta.TransferSyntaxUID == dcmread(original).file_meta.TransferSyntaxUID:
            assert dataset_bytes(path) == dataset_bytes(original)
        elif SAMPLES[BYTE_EXACT_SAMPLES[study.sop_uids.index(uid)]] in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1"):
            assert dcmread(path) == dcmread(original)
        else:
            assert np.array_equal(dcmread(path).pixel_array, dcmread(original).pixel_array)


def test_move_with_an_unreadable_instance_sends_the_others_and_counts_one_failure(
    clinic, scp_port, receiver, study, settings
):
    # The instances are read and parsed ahead of the sender; a bad one in the middle fails alone.
    from urllib.parse import urlparse

    from studies.models import Instance

    bad = Instance.objects.for_clinic(clinic).order_by("series__series_number", "instance_number", "pk")[1]
    for url in (settings.PRIMARY_STORE_URL, settings.REPLICA_STORE_URL):
        target = Path(urlparse(url).path) / bad.object_key
        if target.exists():
            data = bytearray(target.read_bytes())
            data[len(data) // 2] ^= 0xFF
            target.write_bytes(bytes(data))

    statuses = move(scp_port, clinic.ae_title, VIEWER_AE, QueryRetrieveLevel="STUDY",
                    StudyInstanceUID=study.study_uid)

    final = statuses[-1]
    assert final.NumberOfFailedSuboperations == 1
    assert final.NumberOfCompletedSuboperations == len(study.files) - 1
    expected = {uid: data for uid, data in originals(study).items() if uid != bad.sop_instance_uid}
    assert receiver.received == expected

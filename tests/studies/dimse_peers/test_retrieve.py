"""C-MOVE and C-GET across clinics and destinations, as movescu/getscu and pynetdicom see them."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
)

from studies.ingest import instance_ingest
from tests.dicom_files import dataset_write, sample_dataset
from tests.studies.dimse_support import (
    HOST,
    MODALITY_AE,
    VIEWER_AE,
    Receiver,
    c_get,
    move,
    register_node,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("tasks_run_inline")]


@pytest.fixture
def twin_studies(clinic, other_clinic, tmp_path):
    """The same Study (and Series) Instance UID in both clinics, each with an instance of its own."""
    study_uid, series_uid = generate_uid(), generate_uid()
    ours = sample_dataset("CT_small.dcm", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, PatientID="P1",
                          PatientName="OURS^A")
    theirs = sample_dataset("CT_small.dcm", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid,
                            PatientID="P1", PatientName="THEIRS^B")
    instance_ingest(clinic=clinic, source_path=str(dataset_write(ours, tmp_path / "a.dcm")), source="test")
    instance_ingest(clinic=other_clinic, source_path=str(dataset_write(theirs, tmp_path / "b.dcm")), source="test")
    return {"study": study_uid, "series": series_uid, "ours": str(ours.SOPInstanceUID),
            "theirs": str(theirs.SOPInstanceUID)}


@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE"])
def test_move_with_a_study_uid_both_clinics_hold_sends_only_ours(clinic, scp_port, receiver, twin_studies, level):
    keys = {"QueryRetrieveLevel": level, "StudyInstanceUID": twin_studies["study"]}
    if level in ("SERIES", "IMAGE"):
        keys["SeriesInstanceUID"] = twin_studies["series"]
    if level == "IMAGE":
        keys["SOPInstanceUID"] = [twin_studies["ours"], twin_studies["theirs"]]
    statuses = move(scp_port, clinic.ae_title, VIEWER_AE, **keys)
    assert statuses[-1].Status == 0x0000
    assert set(receiver.received) == {twin_studies["ours"]}


def test_patient_root_move_by_patient_id_both_clinics_use(clinic, scp_port, receiver, twin_studies):
    statuses = move(scp_port, clinic.ae_title, VIEWER_AE, PatientRootQueryRetrieveInformationModelMove,
                    QueryRetrieveLevel="PATIENT", PatientID="P1")
    assert statuses[-1].Status == 0x0000
    assert set(receiver.received) == {twin_studies["ours"]}


@pytest.mark.parametrize("level", ["STUDY", "IMAGE"])
def test_get_with_a_study_uid_both_clinics_hold_returns_only_ours(clinic, scp_port, twin_studies, level):
    keys = {"QueryRetrieveLevel": level, "StudyInstanceUID": twin_studies["study"]}
    if level == "IMAGE":
        keys["SeriesInstanceUID"] = twin_studies["series"]
        keys["SOPInstanceUID"] = [twin_studies["ours"], twin_studies["theirs"]]
    received, statuses = c_get(scp_port, clinic.ae_title, StudyRootQueryRetrieveInformationModelGet, **keys)
    assert statuses[-1] == 0x0000
    assert set(received) == {twin_studies["ours"]}


def test_move_to_another_clinics_destination_is_refused(clinic, other_clinic, scp_port, twin_studies):
    theirs = Receiver(ae_title="THEIRVIEW")
    try:
        register_node(other_clinic, ae_title="THEIRVIEW", port=theirs.port, allow_inbound=False)
        statuses = move(scp_port, clinic.ae_title, "THEIRVIEW", QueryRetrieveLevel="STUDY",
                        StudyInstanceUID=twin_studies["study"])
        assert [s.Status for s in statuses] == [0xA801]
        assert theirs.received == {}
    finally:
        theirs.close()


def test_move_to_a_node_that_is_not_a_move_destination_is_refused(clinic, scp_port, twin_studies):
    other = Receiver(ae_title="NOMOVE")
    try:
        register_node(clinic, ae_title="NOMOVE", port=other.port, is_move_destination=False)
        statuses = move(scp_port, clinic.ae_title, "NOMOVE", QueryRetrieveLevel="STUDY",
                        StudyInstanceUID=twin_studies["study"])
        assert [s.Status for s in statuses] == [0xA801]
        assert other.received == {}
    finally:
        other.close()


def test_patient_root_get_by_patient_id_returns_only_ours(clinic, scp_port, twin_studies):
    received, statuses = c_get(scp_port, clinic.ae_title, PatientRootQueryRetrieveInformationModelGet,
                             QueryRetrieveLevel="PATIENT", PatientID="P1")
    assert statuses[-1] == 0x0000
    assert set(received) == {twin_studies["ours"]}


def test_getscu_and_movescu_with_a_shared_study_uid_get_only_ours(clinic, scp_port, twin_studies, tmp_path):
    from pydicom import dcmread

    from tests.studies.dimse_support import dcmtk, free_port

    got = tmp_path / "got"
    got.mkdir()
    dcmtk("getscu", "-aet", MODALITY_AE, "-aec", clinic.ae_title, "-od", got, "-S",
          "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={twin_studies['study']}", HOST, scp_port,
          check=True, cwd=got)
    assert {str(dcmread(p).SOPInstanceUID) for p in got.iterdir()} == {twin_studies["ours"]}

    moved = tmp_path / "moved"
    moved.mkdir()
    port = free_port()
    register_node(clinic, ae_title="MOVESCU", port=port)
    dcmtk("movescu", "-aet", "MOVESCU", "-aec", clinic.ae_title, "-aem", "MOVESCU", "--port", port, "-od", moved,
          "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={twin_studies['study']}", HOST, scp_port,
          check=True, cwd=moved)
    assert {str(dcmread(p).SOPInstanceUID) for p in moved.iterdir()} == {twin_studies["ours"]}

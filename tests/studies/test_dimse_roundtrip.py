"""The whole DIMSE round trip: a study stored over DICOM both ways, found at every level, retrieved byte for byte."""

from __future__ import annotations

import pytest
from pydicom import Dataset, dcmread
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelGet

from tests.dicom_files import write_study
from tests.studies.dimse_support import (
    BYTE_EXACT_SAMPLES,
    HOST,
    MODALITY_AE,
    VIEWER_AE,
    Receiver,
    dataset_bytes,
    dcmtk,
    move,
    register_node,
    running_scp,
    storage_received,
    store_with_pynetdicom,
)

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("tasks_run_inline")]


def test_study_stored_both_ways_is_found_at_every_level_and_retrieved_unchanged(clinic, tmp_path):
    register_node(clinic)
    receiver = Receiver()
    register_node(clinic, ae_title=VIEWER_AE, port=receiver.port, allow_inbound=False)
    study = write_study(tmp_path / "originals", samples=BYTE_EXACT_SAMPLES)
    originals = {uid: dataset_bytes(path) for uid, path in zip(study.sop_uids, study.files, strict=True)}
    # storescu proposes uncompressed syntaxes unless told which codecs to offer: it sends those.
    by_storescu = [path for path, name in zip(study.files, BYTE_EXACT_SAMPLES, strict=True)
                   if name in ("CT_small.dcm", "MR_small_implicit.dcm")]
    by_pynetdicom = [path for path in study.files if path not in by_storescu]
    try:
        with running_scp() as port:
            # Store: the uncompressed files with DCMTK storescu, the compressed ones with pynetdicom.
            dcmtk("storescu", "-aet", MODALITY_AE, "-aec", clinic.ae_title, HOST, port, *by_storescu,
                  check=True)
            assert store_with_pynetdicom(port, clinic.ae_title, by_pynetdicom) == [0] * len(by_pynetdicom)

            # Find at every level (Patient Root), with findscu.
            counts = {}
            for level, keys in {
                "PATIENT": ["PatientID=" + study.patient_id],
                "STUDY": ["PatientID=" + study.patient_id, "StudyInstanceUID"],
                "SERIES": ["PatientID=" + study.patient_id, "StudyInstanceUID=" + study.study_uid,
                           "SeriesInstanceUID"],
                "IMAGE": ["PatientID=" + study.patient_id, "StudyInstanceUID=" + study.study_uid,
                          "SeriesInstanceUID=" + study.series_uids[0], "SOPInstanceUID"],
            }.items():
                out = tmp_path / f"find-{level}"
                out.mkdir()
                args = [arg for key in keys for arg in ("-k", key)]
                dcmtk("findscu", "-P", "-aet", MODALITY_AE, "-aec", clinic.ae_title, "-X", "-od", out,
                      "-k", f"QueryRetrieveLevel={level}", *args, HOST, port, check=True)
                counts[level] = len([dcmread(p) for p in out.glob("rsp*.dcm")])
            assert counts == {"PATIENT": 1, "STUDY": 1, "SERIES": len(study.series_uids), "IMAGE": 1}

            # Retrieve with C-MOVE into another SCP, and with C-GET over the same association.
            statuses = move(port, clinic.ae_title, VIEWER_AE, QueryRetrieveLevel="STUDY",
                            StudyInstanceUID=study.study_uid)
            ae = AE(ae_title=MODALITY_AE)
            ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
            roles = {}
            for path in study.files:
                meta = dcmread(path, stop_before_pixels=True).file_meta
                ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
                roles[meta.MediaStorageSOPClassUID] = build_role(meta.MediaStorageSOPClassUID, scp_role=True)
            got: dict[str, bytes] = {}
            assoc = ae.associate(HOST, port, ae_title=clinic.ae_title, ext_neg=list(roles.values()),
                                 evt_handlers=[(evt.EVT_C_STORE, storage_received, [got])])
            query = Dataset()
            query.QueryRetrieveLevel = "PATIENT"
            query.PatientID = study.patient_id
            get_statuses = [status.Status for status, _ in
                            assoc.send_c_get(query, PatientRootQueryRetrieveInformationModelGet)]
            assoc.release()
    finally:
        receiver.close()

    assert statuses[-1].Status == 0x0000
    assert get_statuses[-1] == 0x0000
    assert receiver.received == originals
    assert got == originals

"""DIMSE statuses a peer gets for requests we refuse: retrieves without a usable unique key, C-STOREs whose
data set is not what the request names, and requests of a node removed while its association is open."""

from __future__ import annotations

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from studies.anonymize import services as anonymization
from studies.dimse import handlers, nodes
from studies.errors import AnnouncedUidMismatch
from studies.ingest import Origin, instance_ingest, instances_ingest
from studies.models import DicomNode, Instance
from tenants.models import AuditEvent
from tests.dicom_files import dataset_write, sample_dataset
from tests.studies.dimse_support import (
    HOST,
    MODALITY_AE,
    VIEWER_AE,
    c_get,
    encoded,
    move,
    raw_store,
    storage_received,
    store_with_pynetdicom,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("tasks_run_inline")]


def ct(**attributes: object) -> Dataset:
    ds = sample_dataset("CT_small.dcm", StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), **attributes)
    if "DataSetTrailingPadding" in ds:
        del ds.DataSetTrailingPadding
    return ds


@pytest.fixture
def two_patients(clinic, tmp_path):
    """Two patients of the clinic, P1 and P2, one CT instance each; return their SOP Instance UIDs."""
    uids = {}
    for patient_id in ("P1", "P2"):
        ds = ct(PatientID=patient_id, PatientName=f"PATIENT^{patient_id}")
        instance_ingest(clinic=clinic, source_path=str(dataset_write(ds, tmp_path / f"{patient_id}.dcm")),
                        source="test")
        uids[patient_id] = str(ds.SOPInstanceUID)
    return uids


@pytest.mark.parametrize("patient_id", ["*", "P?"])
def test_move_with_a_wildcard_patient_id_at_patient_level_is_refused(clinic, scp_port, receiver, two_patients,
                                                                     patient_id):
    statuses = move(scp_port, clinic.ae_title, VIEWER_AE, PatientRootQueryRetrieveInformationModelMove,
                    QueryRetrieveLevel="PATIENT", PatientID=patient_id)

    assert [s.Status for s in statuses] == [0xA900]
    assert receiver.received == {}


def test_move_with_a_wildcard_study_uid_is_refused(clinic, scp_port, receiver, two_patients):
    statuses = move(scp_port, clinic.ae_title, VIEWER_AE, QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2*")

    assert [s.Status for s in statuses] == [0xA900]
    assert receiver.received == {}


def test_get_with_a_wildcard_patient_id_is_refused(clinic, scp_port, two_patients):
    received, statuses = c_get(scp_port, clinic.ae_title, PatientRootQueryRetrieveInformationModelGet,
                             QueryRetrieveLevel="PATIENT", PatientID="*")

    assert statuses == [0xA900]
    assert received == {}


def test_a_refused_move_is_audited_without_the_identifiers_values(clinic, scp_port, receiver, two_patients):
    move(scp_port, clinic.ae_title, VIEWER_AE, PatientRootQueryRetrieveInformationModelMove,
         QueryRetrieveLevel="PATIENT", PatientID="P*")

    event = AuditEvent.objects.for_clinic(clinic).get(action="dimse.retrieve")
    assert (event.result, event.details["reason"], event.details["status"]) == ("rejected", "identifier refused",
                                                                                 "0xA900")
    assert "P*" not in str(event.details)


def test_move_by_one_patient_id_still_sends_that_patient(clinic, scp_port, receiver, two_patients):
    statuses = move(scp_port, clinic.ae_title, VIEWER_AE, PatientRootQueryRetrieveInformationModelMove,
                    QueryRetrieveLevel="PATIENT", PatientID="P1")

    assert statuses[-1].Status == 0x0000
    assert set(receiver.received) == {two_patients["P1"]}


def test_move_without_the_levels_unique_key_answers_identifier_does_not_match(clinic, scp_port, receiver,
                                                                               two_patients):
    statuses = move(scp_port, clinic.ae_title, VIEWER_AE, QueryRetrieveLevel="STUDY", PatientID="P1")

    assert [s.Status for s in statuses] == [0xA900]
    assert statuses[0].ErrorComment == "A STUDY level retrieve needs StudyInstanceUID."
    assert receiver.received == {}


def test_get_without_the_levels_unique_key_answers_identifier_does_not_match(clinic, scp_port, two_patients):
    study_uid = str(Instance.objects.for_clinic(clinic).select_related("series__study").first().series.study
                    .study_instance_uid)

    received, statuses = c_get(scp_port, clinic.ae_title, StudyRootQueryRetrieveInformationModelGet,
                             QueryRetrieveLevel="SERIES", StudyInstanceUID=study_uid)

    assert statuses == [0xA900]
    assert received == {}


def test_patient_level_move_in_study_root_is_refused_with_a900(clinic, scp_port, receiver, two_patients):
    statuses = move(scp_port, clinic.ae_title, VIEWER_AE, StudyRootQueryRetrieveInformationModelMove,
                    QueryRetrieveLevel="PATIENT", PatientID="P1")

    assert [s.Status for s in statuses] == [0xA900]
    assert receiver.received == {}


def test_dataset_uid_differing_from_the_affected_uid_is_refused_and_not_stored(clinic, scp_port, tmp_path):
    ds = ct()

    status = raw_store(scp_port, clinic.ae_title, tmp_path, sop_class=CTImageStorage, sop_uid=generate_uid(),
                       data=encoded(ds, implicit=False))

    assert status == 0xA900
    assert not Instance.objects.for_clinic(clinic).exists()


def test_dataset_uid_differing_from_the_affected_uid_is_refused_when_the_node_anonymizes_too(clinic, scp_port,
                                                                                            tmp_path):
    project = anonymization.project_create(clinic=clinic, name="Registry", pseudonym_prefix="REG")
    anonymization.ingest_rules_set(project=project, clinic_wide=True, api_tokens=[], dicom_nodes=[])
    ds = ct()

    status = raw_store(scp_port, clinic.ae_title, tmp_path, sop_class=CTImageStorage, sop_uid=generate_uid(),
                       data=encoded(ds, implicit=False))

    assert status == 0xA900
    assert not Instance.objects.for_clinic(clinic).exists()


def test_ingest_refuses_a_file_whose_uid_is_not_the_one_announced_and_stores_the_others(clinic, tmp_path):
    good, bad = ct(), ct()
    paths = [str(dataset_write(good, tmp_path / "good.dcm")), str(dataset_write(bad, tmp_path / "bad.dcm"))]

    items = instances_ingest(clinic=clinic, paths=paths, origin=Origin.system(source="test"),
                             announced_uids=[str(good.SOPInstanceUID), generate_uid()])

    assert items[0].error is None
    assert isinstance(items[1].error, AnnouncedUidMismatch)
    assert list(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", flat=True)) == [
        str(good.SOPInstanceUID)]


def test_dataset_of_another_sop_class_than_the_context_is_stored_with_a_warning(clinic, scp_port, tmp_path):
    ds = ct()

    status = raw_store(scp_port, clinic.ae_title, tmp_path, sop_class=MRImageStorage, sop_uid=str(ds.SOPInstanceUID),
                       data=encoded(ds, implicit=False))

    assert status == 0xB007
    stored = Instance.objects.for_clinic(clinic).get()
    assert (stored.sop_instance_uid, stored.sop_class_uid) == (str(ds.SOPInstanceUID), CTImageStorage)


def test_matching_dataset_is_plain_success(clinic, scp_port, tmp_path):
    ds = ct()

    status = raw_store(scp_port, clinic.ae_title, tmp_path, sop_class=CTImageStorage, sop_uid=str(ds.SOPInstanceUID),
                       data=encoded(ds, implicit=False))

    assert status == 0x0000
    assert Instance.objects.for_clinic(clinic).get().sop_instance_uid == str(ds.SOPInstanceUID)


def find_study_answers(assoc) -> list[Dataset]:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    return [i for s, i in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
            if s.Status in (0xFF00, 0xFF01)]


def find_ae() -> AE:
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    return ae


def test_a_removed_node_can_no_longer_query_on_an_association_it_kept_open(clinic, scp_port, two_patients):
    assoc = find_ae().associate(HOST, scp_port, ae_title=clinic.ae_title)
    assert assoc.is_established
    try:
        assert len(find_study_answers(assoc)) == 2
        nodes.dicom_node_delete(clinic=clinic, node=DicomNode.objects.for_clinic(clinic).get(ae_title=MODALITY_AE))

        answers = find_study_answers(assoc)
    finally:
        assoc.release()

    assert answers == []


def test_a_node_whose_inbound_access_was_switched_off_can_no_longer_query(clinic, scp_port, two_patients):
    assoc = find_ae().associate(HOST, scp_port, ae_title=clinic.ae_title)
    assert assoc.is_established
    try:
        DicomNode.objects.for_clinic(clinic).filter(ae_title=MODALITY_AE).update(allow_inbound=False)

        answers = find_study_answers(assoc)
    finally:
        assoc.release()

    assert answers == []


def test_a_removed_node_can_no_longer_get_on_an_association_it_kept_open(clinic, scp_port, two_patients):
    received: dict[str, bytes] = {}
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(HOST, scp_port, ae_title=clinic.ae_title,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, lambda event: storage_received(event, received))])
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = "P1"
    try:
        nodes.dicom_node_delete(clinic=clinic, node=DicomNode.objects.for_clinic(clinic).get(ae_title=MODALITY_AE))

        statuses = [s.Status for s, _ in assoc.send_c_get(query, PatientRootQueryRetrieveInformationModelGet)
                    if "Status" in s]
    finally:
        assoc.release()

    assert statuses == [0x0124]
    assert received == {}


def test_a_removed_node_can_no_longer_move_on_an_association_it_kept_open(clinic, scp_port, receiver, two_patients):
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(HOST, scp_port, ae_title=clinic.ae_title)
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "PATIENT"
    query.PatientID = "P1"
    try:
        nodes.dicom_node_delete(clinic=clinic, node=DicomNode.objects.for_clinic(clinic).get(ae_title=MODALITY_AE))

        statuses = [s.Status for s, _ in assoc.send_c_move(query, VIEWER_AE,
                                                           PatientRootQueryRetrieveInformationModelMove)]
    finally:
        assoc.release()

    assert statuses == [0xA801]
    assert receiver.received == {}


def test_a_removed_node_can_no_longer_store_once_the_recheck_interval_passed(clinic, scp_port, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr(handlers, "NODE_RECHECK_SECONDS", 0.0)
    first, second = ct(), ct()
    paths = [dataset_write(first, tmp_path / "a.dcm"), dataset_write(second, tmp_path / "b.dcm")]
    ae = AE(ae_title=MODALITY_AE)
    syntax = str(dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID)
    ae.add_requested_context(CTImageStorage, [syntax])
    assoc = ae.associate(HOST, scp_port, ae_title=clinic.ae_title)
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_store(paths[0]).Status]
        nodes.dicom_node_delete(clinic=clinic, node=DicomNode.objects.for_clinic(clinic).get(ae_title=MODALITY_AE))
        statuses.append(assoc.send_c_store(paths[1]).Status)
    finally:
        assoc.release()

    assert statuses == [0x0000, 0x0124]
    assert list(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", flat=True)) == [
        str(first.SOPInstanceUID)
    ]


def test_a_registered_node_stores_many_instances_on_one_association(clinic, scp_port, tmp_path):
    paths = [dataset_write(ct(), tmp_path / f"{n}.dcm") for n in range(3)]

    statuses = store_with_pynetdicom(scp_port, clinic.ae_title, paths)

    assert statuses == [0x0000] * 3
    assert Instance.objects.for_clinic(clinic).count() == 3

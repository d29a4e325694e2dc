"""Requests on an association its node keeps open after being removed or shut out: C-ECHO, storage commitment
(the N-ACTION and the later report), and C-FIND, whose refusals are audited like its answers."""

from __future__ import annotations

import json
import time

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import StorageCommitmentPushModel, StudyRootQueryRetrieveInformationModelFind, Verification

from studies.archive import stores
from studies.dimse import nodes
from studies.dimse.commitment import COMMITMENT_INSTANCE
from studies.models import DicomNode, Instance
from tenants.models import AuditEvent
from tests.studies.commitment_support import Modality, commitment_action
from tests.studies.dimse_support import HOST, MODALITY_AE, c_find, identifier, running_scp

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("tasks_run_inline")]


def _open(port: int, called: str, *contexts: str):
    ae = AE(ae_title=MODALITY_AE)
    for context in contexts:
        ae.add_requested_context(context)
    assoc = ae.associate(HOST, port, ae_title=called)
    assert assoc.is_established
    return assoc


def _remove_node(clinic) -> None:
    nodes.dicom_node_delete(clinic=clinic, node=DicomNode.objects.for_clinic(clinic).get(ae_title=MODALITY_AE))


def _references(clinic) -> list[tuple[str, str]]:
    return [(i.sop_class_uid, i.sop_instance_uid) for i in Instance.objects.for_clinic(clinic)]


def _audited(clinic, **filters: object) -> AuditEvent:
    """The one audit entry matching, waiting for it: some are written by a thread after the answer."""
    entries = AuditEvent.objects.for_clinic(clinic).filter(**filters)
    deadline = time.monotonic() + 15
    while not entries.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return entries.get()


# --- C-ECHO -------------------------------------------------------------------------------------------


def test_a_removed_node_gets_a_refusal_to_c_echo_on_an_association_it_kept_open(clinic, scp_port):
    assoc = _open(scp_port, clinic.ae_title, Verification)
    try:
        before = assoc.send_c_echo().Status
        _remove_node(clinic)

        after = assoc.send_c_echo().Status
    finally:
        assoc.release()

    assert (before, after) == (0x0000, 0x0124)


# --- storage commitment -------------------------------------------------------------------------------


@pytest.fixture
def modality(clinic):
    listening = Modality()
    register = nodes.dicom_node_create(clinic=clinic, ae_title=MODALITY_AE, host=HOST, port=listening.port)
    yield listening, register
    listening.close()


@pytest.fixture
def commitment_scp(modality):
    with running_scp() as port:
        yield port


def test_a_node_shut_out_cannot_request_storage_commitment_on_an_association_it_kept_open(
    clinic, modality, commitment_scp, stored_ct_study
):
    listening, node = modality
    assoc = _open(commitment_scp, clinic.ae_title, StorageCommitmentPushModel)
    try:
        DicomNode.objects.filter(pk=node.pk).update(allow_inbound=False)

        status, _ = assoc.send_n_action(commitment_action(_references(clinic)), 1, StorageCommitmentPushModel,
                                        COMMITMENT_INSTANCE)
    finally:
        assoc.release()

    assert status.Status == 0x0124
    time.sleep(1)
    assert listening.reports == []
    assert not AuditEvent.objects.for_clinic(clinic).filter(action="dimse.commitment").exists()


def test_the_commitment_report_is_not_sent_to_a_node_removed_while_it_was_being_prepared(
    clinic, modality, commitment_scp, stored_ct_study, settings
):
    listening, _ = modality
    # An instance without its backup copy holds the report back (two seconds), time to remove the node.
    settings.STORAGE_COMMITMENT_WAIT_SECONDS = 2
    lagging = Instance.objects.get(sop_instance_uid=stored_ct_study.sop_uids[1])
    stores.get_store("replica").delete(lagging.object_key)
    Instance.objects.filter(pk=lagging.pk).update(replicated_at=None)
    assoc = _open(commitment_scp, clinic.ae_title, StorageCommitmentPushModel)
    status, _ = assoc.send_n_action(commitment_action(_references(clinic)), 1, StorageCommitmentPushModel,
                                    COMMITMENT_INSTANCE)
    assoc.release()

    _remove_node(clinic)

    entry = _audited(clinic, action="dimse.commitment")
    assert status.Status == 0x0000
    assert entry.details["report"] == "not sent: node removed"
    assert listening.reports == []


# --- C-FIND refusals are audited ----------------------------------------------------------------------


def test_a_find_with_a_key_below_its_level_is_refused_and_audited(clinic, scp_port, stored_ct_study):
    answers, status = c_find(scp_port, clinic.ae_title, StudyRootQueryRetrieveInformationModelFind,
                             identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="", SOPInstanceUID="1.2.3"))

    event = AuditEvent.objects.for_clinic(clinic).get(action="dimse.find")
    assert (answers, status) == ([], 0xA900)
    assert (event.result, event.details) == ("rejected", {
        "level": "STUDY", "reason": "SOPInstanceUID is not a key at the STUDY level", "status": "0xA900"})


def test_a_refused_find_is_audited_without_the_values_it_asked_for(clinic, scp_port, stored_ct_study):
    answers, status = c_find(scp_port, clinic.ae_title, StudyRootQueryRetrieveInformationModelFind,
                             identifier(QueryRetrieveLevel="STUDY", PatientName="SECRET^NAME",
                                        StudyDate="DOE19700101"))

    event = AuditEvent.objects.for_clinic(clinic).get(action="dimse.find")
    assert status is not None and status != 0x0000 and answers == []
    assert (event.result, event.details["reason"], event.details["level"]) == (
        "rejected", "invalid matching value for StudyDate", "STUDY")
    assert "SECRET" not in json.dumps(event.details) and "DOE" not in json.dumps(event.details)


def test_a_find_of_an_unknown_level_is_audited_without_the_level_it_named(clinic, scp_port, stored_ct_study):
    c_find(scp_port, clinic.ae_title, StudyRootQueryRetrieveInformationModelFind,
           identifier(QueryRetrieveLevel="SMITH", PatientID=""))

    event = AuditEvent.objects.for_clinic(clinic).get(action="dimse.find")
    assert (event.result, event.details) == ("rejected", {
        "level": "", "reason": "unknown Query/Retrieve Level", "status": "0xA900"})


def test_finds_of_a_removed_node_on_an_association_it_kept_open_are_refused_and_audited(
    clinic, scp_port, stored_ct_study
):
    assoc = _open(scp_port, clinic.ae_title, StudyRootQueryRetrieveInformationModelFind)
    query = identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="")
    try:
        _remove_node(clinic)

        statuses = [[s.Status for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
                    for _ in range(2)]
    finally:
        assoc.release()

    assert statuses == [[0x0124], [0x0124]]
    refused = AuditEvent.objects.for_clinic(clinic).filter(action="dimse.find")
    assert [(e.result, e.details) for e in refused] == [
        ("rejected", {"level": "", "reason": "node removed or may no longer call in", "status": "0x0124"})] * 2

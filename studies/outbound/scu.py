"""Our side as the DICOM client (SCU): C-STORE to a node, C-FIND on a node, C-MOVE and C-GET from it.

Every association calls with the clinic's own AE title unless the node names another one
(``DicomNode.calling_ae_title``), and asks for the node's AE title as called AE. Each function opens one
association, does its work and releases it; failures to connect raise ``NodeUnreachable`` so callers can
retry later, while a node's refusal of one instance is a per-instance result.
A node with a pinned certificate is called over DICOM TLS only (``studies.dimse.tls``): when that cannot
be, nothing is sent and ``NodeUnreachable`` says why; so too when the node's host has no address we may
connect to (``nodes.node_connect_address``: internal addresses only inside DICOM_NODE_ALLOWED_NETWORKS).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import cast

from django.conf import settings
from pydicom import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from studies.dimse import nodes
from studies.dimse import tls as node_tls
from studies.dimse.move import MAX_CONTEXTS, accepted_syntaxes, instance_dataset, send_syntax, storage_contexts
from studies.dimse.scp import STORAGE_TRANSFER_SYNTAXES
from studies.models import DicomNode, Instance
from studies.transcoding import TranscodeError, dataset_transcode
from tenants.models import Clinic

SUCCESS = 0x0000
PENDING_STATUSES = {0xFF00, 0xFF01}
# Warnings (0xB000-0xBFFF, 0x0107, 0x0116) still mean the node stored the instance.
WARNING_STATUSES = {0x0001, 0x0107, 0x0116}
ACSE_TIMEOUT = 30
DIMSE_TIMEOUT = 120
NETWORK_TIMEOUT = 120
MAXIMUM_PDU_SIZE = 1024 * 1024
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
COMPRESSED = [ts for ts in STORAGE_TRANSFER_SYNTAXES if ts not in (*UNCOMPRESSED, DeflatedExplicitVRLittleEndian)]


class NodeUnreachable(Exception):
    """The node did not accept an association (down, refused, or wrong address)."""


@dataclass(frozen=True)
class StoreResult:
    instance: Instance
    status: int | None
    error: str = ""

    @property
    def is_success(self) -> bool:
        return self.status is not None and (self.status == SUCCESS or self.status in WARNING_STATUSES
                                            or 0xB000 <= self.status <= 0xBFFF)


@dataclass(frozen=True)
class ListedStudy:
    study_instance_uid: str
    instances: int | None


@dataclass(frozen=True)
class ListedInstance:
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str


def calling_ae_title(*, clinic: Clinic, node: DicomNode) -> str:
    return (node.calling_ae_title or clinic.ae_title or settings.DICOM_AE_TITLE)[:16]


def _ae(*, clinic: Clinic, node: DicomNode) -> AE:
    ae = AE(ae_title=calling_ae_title(clinic=clinic, node=node))
    ae.acse_timeout = ACSE_TIMEOUT
    ae.dimse_timeout = DIMSE_TIMEOUT
    ae.network_timeout = NETWORK_TIMEOUT
    ae.maximum_pdu_size = MAXIMUM_PDU_SIZE
    return ae


def _associate(
    ae: AE, node: DicomNode, *, roles: Iterable[SCP_SCU_RoleSelectionNegotiation] = (),
    evt_handlers: list[EventHandlerType] | None = None,
) -> Association:
    try:
        # The checked address itself, not the name again: DNS could answer otherwise by now.
        address = nodes.node_connect_address(node)
        tls = node_tls.node_client_tls(node)
    except (nodes.NodeAddressRefused, node_tls.NodeTLSError) as exc:
        raise NodeUnreachable(exc.message) from exc
    assoc = ae.associate(address, node.port, ae_title=node.ae_title, ext_neg=list(roles) or None,
                         evt_handlers=evt_handlers, tls_args=tls.tls_args if tls is not None else None)
    if not assoc.is_established:
        if tls is not None and tls.failure is not None:
            raise NodeUnreachable(tls.failure.message)
        reason = "rejected the association" if assoc.is_rejected else "did not answer"
        raise NodeUnreachable(f"{node_tls.node_label(node)} {reason}.")
    return assoc


def instances_store(
    *, clinic: Clinic, node: DicomNode, instances: list[Instance], on_result: Callable[[StoreResult], None]
) -> None:
    """C-STORE each instance over one association, calling ``on_result`` after each.

    Instances are sent in their stored syntax when the node accepts it, else converted (losslessly) to
    a syntax the node accepted, as C-MOVE does. Raises NodeUnreachable when no association can be made;
    an association lost midway raises it too, after the results reported so far.
    """
    if not instances:
        return
    ae = _ae(clinic=clinic, node=node)
    ae.requested_contexts = storage_contexts(instances)
    assoc = _associate(ae, node)
    accepted = accepted_syntaxes(assoc.accepted_contexts)
    try:
        for instance in instances:
            if not assoc.is_established:
                raise NodeUnreachable(f"{node.ae_title} closed the association.")
            target = send_syntax(stored=instance.transfer_syntax_uid,
                                 accepted=accepted.get(instance.sop_class_uid, set()))
            try:
                dataset = instance_dataset(clinic=clinic, instance=instance)
                if target is not None:
                    dataset_transcode(dataset, target)
            except TranscodeError as exc:
                on_result(StoreResult(instance, None, f"Could not convert for the node: {exc}"[:200]))
                continue
            except Exception as exc:  # noqa: BLE001 - the archive's read errors are per instance here
                on_result(StoreResult(instance, None, f"Could not read the stored instance: {type(exc).__name__}"))
                continue
            try:
                answer = assoc.send_c_store(dataset)
            except ValueError as exc:
                # No accepted presentation context can carry this instance.
                on_result(StoreResult(instance, None, str(exc)[:200]))
                continue
            status = int(answer.Status) if "Status" in answer else None
            error = "" if status is not None else "No answer from the node"
            if status is not None and "ErrorComment" in answer:
                error = str(answer.ErrorComment)
            on_result(StoreResult(instance, status, error))
    finally:
        if assoc.is_established:
            assoc.release()


def _find(*, clinic: Clinic, node: DicomNode, query: Dataset) -> Iterator[Dataset]:
    ae = _ae(clinic=clinic, node=node)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, UNCOMPRESSED)
    assoc = _associate(ae, node)
    try:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if not status or "Status" not in status:
                raise NodeUnreachable(f"{node.ae_title} stopped answering the query.")
            code = int(status.Status)
            if code in PENDING_STATUSES and identifier is not None:
                yield identifier
            elif code != SUCCESS and code not in PENDING_STATUSES:
                raise NodeUnreachable(f"{node.ae_title} refused the query (status 0x{code:04X}).")
    finally:
        if assoc.is_established:
            assoc.release()


def studies_find(
    *, clinic: Clinic, node: DicomNode, study_date_from: str = "", study_date_to: str = "",
    modalities: Iterable[str] = (), patient_id: str = "",
) -> list[ListedStudy]:
    """List the node's studies in scope (study level, Study Root); one query per modality asked for."""
    date_range = f"{study_date_from}-{study_date_to}" if (study_date_from or study_date_to) else ""
    found: dict[str, ListedStudy] = {}
    for modality in list(modalities) or [""]:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        query.StudyDate = date_range
        query.PatientID = patient_id
        query.ModalitiesInStudy = modality
        query.NumberOfStudyRelatedInstances = ""
        for identifier in _find(clinic=clinic, node=node, query=query):
            uid = str(identifier.get("StudyInstanceUID", "")).strip()
            if not uid:
                continue
            count = identifier.get("NumberOfStudyRelatedInstances")
            found[uid] = ListedStudy(uid, int(count) if count not in (None, "") else None)
    return list(found.values())


def study_instances_find(*, clinic: Clinic, node: DicomNode, study_instance_uid: str) -> list[ListedInstance]:
    """List every instance of one of the node's studies (image level)."""
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study_instance_uid
    query.SeriesInstanceUID = ""
    query.SOPInstanceUID = ""
    query.SOPClassUID = ""
    listed = []
    for identifier in _find(clinic=clinic, node=node, query=query):
        sop_uid = str(identifier.get("SOPInstanceUID", "")).strip()
        if sop_uid:
            listed.append(ListedInstance(str(identifier.get("SeriesInstanceUID", "")).strip(), sop_uid,
                                         str(identifier.get("SOPClassUID", "")).strip()))
    return listed


def _retrieve_query(study_instance_uid: str, sop_instance_uids: list[str] | None) -> Dataset:
    query = Dataset()
    query.StudyInstanceUID = study_instance_uid
    if sop_instance_uids:
        query.QueryRetrieveLevel = "IMAGE"
        query.SeriesInstanceUID = ""
        query.SOPInstanceUID = sop_instance_uids
    else:
        query.QueryRetrieveLevel = "STUDY"
    return query


def _retrieve_outcome(node: DicomNode, responses: Iterable[tuple[Dataset, Dataset | None]]) -> None:
    final = None
    for status, _identifier in responses:
        if not status or "Status" not in status:
            raise NodeUnreachable(f"{node.ae_title} stopped answering the retrieve.")
        final = int(status.Status)
    if final is None:
        raise NodeUnreachable(f"{node.ae_title} did not answer the retrieve.")
    # 0xB000 (some sub-operations failed) is not fatal: verification lists what is missing.
    if final not in (SUCCESS, 0xB000) and not 0xA700 <= final <= 0xA7FF:
        if final & 0xF000 in (0xA000, 0xC000):
            raise NodeUnreachable(f"{node.ae_title} refused the retrieve (status 0x{final:04X}).")


def study_move(
    *, clinic: Clinic, node: DicomNode, study_instance_uid: str, sop_instance_uids: list[str] | None = None
) -> None:
    """Ask the node to C-MOVE a study (or some of its instances) to the clinic's own AE title.

    The instances arrive at our DIMSE listener as C-STOREs from the node, through the normal ingest.
    """
    ae = _ae(clinic=clinic, node=node)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove, UNCOMPRESSED)
    assoc = _associate(ae, node)
    try:
        query = _retrieve_query(study_instance_uid, sop_instance_uids)
        _retrieve_outcome(node, assoc.send_c_move(query, clinic.ae_title,
                                                  StudyRootQueryRetrieveInformationModelMove))
    finally:
        if assoc.is_established:
            assoc.release()


def study_get(
    *, clinic: Clinic, node: DicomNode, study_instance_uid: str, sop_class_uids: Iterable[str],
    on_file: Callable[[str, str], int], sop_instance_uids: list[str] | None = None,
) -> None:
    """C-GET a study (or some of its instances) over our own association.

    Each received instance is written to a temporary Part 10 file and handed to ``on_file`` with the SOP
    Instance UID its C-STORE announced (Affected SOP Instance UID); ``on_file`` returns the C-STORE status
    to answer (it ingests the file, refusing one that holds another instance); the file is removed afterwards.
    """
    ae = _ae(clinic=clinic, node=node)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet, UNCOMPRESSED)
    classes = sorted(set(sop_class_uids))[: (MAX_CONTEXTS - 1) // 2]
    # The node sends an instance over a context accepted with its stored syntax, and transcodes it
    # otherwise; an acceptor takes one syntax per context, so each compressed syntax gets a context of
    # its own while the 127 places (the Get context takes one) allow it.
    separate = len(classes) * (1 + len(COMPRESSED)) <= MAX_CONTEXTS - 1
    roles = []
    for sop_class_uid in classes:
        ae.add_requested_context(sop_class_uid, UNCOMPRESSED)
        for syntaxes in ([[ts] for ts in COMPRESSED] if separate else [COMPRESSED]):
            ae.add_requested_context(sop_class_uid, syntaxes)
        roles.append(build_role(sop_class_uid, scp_role=True))

    def handle_store(event: Event) -> int:
        announced = str(cast(C_STORE, event.request).AffectedSOPInstanceUID or "").strip()
        try:
            # In a process that also runs the listener, pynetdicom spools data sets to files already.
            spooled = str(event.dataset_path or "")
        except AttributeError:
            spooled = ""
        if spooled:
            return on_file(spooled, announced)
        fd, path = tempfile.mkstemp(suffix=".dcm", dir=settings.FILE_UPLOAD_TEMP_DIR)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(event.encoded_dataset(include_meta=True))
            return on_file(path, announced)
        finally:
            os.unlink(path)

    assoc = _associate(ae, node, roles=roles, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        query = _retrieve_query(study_instance_uid, sop_instance_uids)
        _retrieve_outcome(node, assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
    finally:
        if assoc.is_established:
            assoc.release()

"""Storage Commitment Push Model (PS3.4 Annex J): tell a modality which images it may delete.

A modality sends N-ACTION (Request Storage Commitment) naming the instances it stored here. The
answer to the N-ACTION only acknowledges the request; the verdict follows in an N-EVENT-REPORT,
sent on the same association while the modality keeps it open, otherwise on a new association to
the registered node. An instance is reported committed only when it is in the clinic's index, in
primary storage *and* its copy is in the backup store: a modality deletes its copy on that word.
Instances not yet backed up are waited for (``STORAGE_COMMITMENT_WAIT_SECONDS``) and, if the copy
still does not exist, reported failed, so the modality keeps its copy and may ask again later.

Like every request on an open association, an N-ACTION is refused (0x0124) once its node was removed or
may no longer call in; the report is not sent to a node removed while it was being prepared.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import close_old_connections, connection
from pydicom import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.sop_class import StorageCommitmentPushModel

from studies.archive import stores
from studies.archive.errors import ArchiveError
from studies.dimse import nodes
from studies.dimse import tls as node_tls
from studies.dimse.handlers import NOT_AUTHORIZED, SUCCESS, AssociationInfo, association_info, still_allowed
from studies.models import DicomNode, Instance
from tenants.audit import audit_record
from tenants.models import Clinic

logger = logging.getLogger(__name__)

# The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_COMMITMENT = 1  # Action Type ID
EVENT_ALL_COMMITTED = 1  # Event Type IDs
EVENT_SOME_FAILED = 2
# Failure Reasons (PS3.3 C.14.1.1).
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
# N-ACTION failure statuses (PS3.7 10.1.4.1.10).
NO_SUCH_SOP_INSTANCE = 0x0112
NO_SUCH_ACTION = 0x0123
INVALID_ARGUMENT = 0x0115
MISSING_ATTRIBUTE = 0x0120
POLL_SECONDS = 1.0
# Seconds the report waits for the requester's association to be free or for a new one to open.
REPORT_TIMEOUT = 30
# A modality that keeps its association open to be told the result answers the report at once. One
# that released it right after our N-ACTION answer never will, and pynetdicom holds its release until
# the wait for the answer ends: wait only this long before reporting again on a new association.
SAME_ASSOCIATION_ANSWER_SECONDS = 3


@dataclass
class CommitmentResult:
    """The verdict on each referenced (SOP Class UID, SOP Instance UID)."""

    committed: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)
    pending: list[tuple[str, str]] = field(default_factory=list)


def _backed_up(store_names: tuple[str, ...], key: str) -> bool:
    try:
        return all(stores.get_store(name).exists(key) for name in store_names)
    except ArchiveError:
        return False  # a store we cannot reach proves nothing: ask again later


def commitment_check(*, clinic: Clinic, references: list[tuple[str, str]]) -> CommitmentResult:
    """Sort referenced instances into committed, failed (with a Failure Reason) and pending.

    Committed: indexed in this clinic (not in the trash), the SOP class matches, marked replicated,
    and the object exists in both the primary and the replica store. Pending: stored, but its
    backup copy is not there yet. Unknown (or another clinic's) instances fail with 0x0112.
    """
    uids = [uid for _, uid in references]
    rows = {
        uid: (sop_class, key, replicated_at)
        for uid, sop_class, key, replicated_at in Instance.objects.for_clinic(clinic)
        .filter(sop_instance_uid__in=uids, series__study__deleted_at=None)
        .values_list("sop_instance_uid", "sop_class_uid", "object_key", "replicated_at")
    }
    result = CommitmentResult()
    for sop_class, uid in references:
        row = rows.get(uid)
        if row is None:
            result.failed.append((sop_class, uid, NO_SUCH_OBJECT_INSTANCE))
        elif row[0] != sop_class:
            result.failed.append((sop_class, uid, CLASS_INSTANCE_CONFLICT))
        elif row[2] is not None and _backed_up(("primary", "replica"), row[1]):
            result.committed.append((sop_class, uid))
        else:
            result.pending.append((sop_class, uid))
    return result


def commitment_wait(*, clinic: Clinic, references: list[tuple[str, str]], seconds: float) -> CommitmentResult:
    """Check until nothing is pending or ``seconds`` have passed; what is still pending then has failed."""
    deadline = time.monotonic() + seconds
    while True:
        result = commitment_check(clinic=clinic, references=references)
        if not result.pending or time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
    result.failed.extend((sop_class, uid, PROCESSING_FAILURE) for sop_class, uid in result.pending)
    result.pending = []
    return result


def event_report(*, transaction_uid: str, result: CommitmentResult, retrieve_ae: str) -> tuple[int, Dataset]:
    """Return the Event Type ID and Event Information of the N-EVENT-REPORT (PS3.4 J.3.3)."""
    info = Dataset()
    info.TransactionUID = transaction_uid
    if result.committed:
        info.RetrieveAETitle = retrieve_ae
        info.ReferencedSOPSequence = [_reference(sop_class, uid) for sop_class, uid in result.committed]
    if result.failed:
        info.FailedSOPSequence = [
            _reference(sop_class, uid, failure_reason=reason) for sop_class, uid, reason in result.failed
        ]
    return (EVENT_SOME_FAILED if result.failed else EVENT_ALL_COMMITTED), info


def _reference(sop_class: str, uid: str, *, failure_reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = uid
    if failure_reason is not None:
        item.FailureReason = failure_reason
    return item


def _references(action: Dataset) -> list[tuple[str, str]] | None:
    try:
        items = action.ReferencedSOPSequence
        return [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)) for i in items]
    except AttributeError:
        return None


def handle_action(event: Event) -> tuple[int, Dataset | None]:
    """N-ACTION (Request Storage Commitment): acknowledge, then report from a thread of its own."""
    info = association_info(event.assoc)
    if info is None:
        return NOT_AUTHORIZED, None
    close_old_connections()
    try:
        allowed = still_allowed(event.assoc, info)
    finally:
        close_old_connections()
    if not allowed:
        return NOT_AUTHORIZED, None
    request = event.request
    if not isinstance(request, N_ACTION):
        return NO_SUCH_ACTION, None
    if str(request.RequestedSOPInstanceUID) != COMMITMENT_INSTANCE:
        return NO_SUCH_SOP_INSTANCE, None
    if request.ActionTypeID != REQUEST_COMMITMENT:
        return NO_SUCH_ACTION, None
    action = event.action_information
    references = _references(action)
    transaction_uid = str(action.get("TransactionUID", "") or "")
    if references is None or not transaction_uid:
        return MISSING_ATTRIBUTE, None
    if not references:
        return INVALID_ARGUMENT, None
    worker = threading.Thread(
        target=_report,
        kwargs={"assoc": event.assoc, "info": info, "transaction_uid": transaction_uid, "references": references},
        name="storage-commitment",
        daemon=True,
    )
    worker.start()
    return SUCCESS, None


def _report(
    *, assoc: Association, info: AssociationInfo, transaction_uid: str, references: list[tuple[str, str]]
) -> None:
    close_old_connections()
    try:
        result = commitment_wait(
            clinic=info.clinic, references=references, seconds=settings.STORAGE_COMMITMENT_WAIT_SECONDS
        )
        event_type, event_info = event_report(
            transaction_uid=transaction_uid, result=result, retrieve_ae=info.clinic.ae_title
        )
        # The wait may have been long: a node removed (or shut out) meanwhile is told nothing, and one
        # changed meanwhile is reached at its address and certificate as they are now.
        node = nodes.dicom_node_inbound_current(clinic=info.clinic, node=info.node)
        how = _send(assoc, info, node, event_type, event_info) if node is not None else "not sent: node removed"
        audit_record(
            clinic=info.clinic, action="dimse.commitment", actor_label=f"dicom:{info.calling_ae}",
            object_type="dicom_node", object_id=str(info.node.uuid), ip_address=info.address or None,
            result="success" if not result.failed else "partial" if result.committed else "failure",
            details={"committed": len(result.committed), "failed": len(result.failed), "report": how},
        )  # fmt: skip
    except Exception:
        logger.exception("Storage commitment report failed for clinic %s", info.clinic.pk)
    finally:
        connection.close()


def _send(assoc: Association, info: AssociationInfo, node: DicomNode, event_type: int, event_info: Dataset) -> str:
    """Send the N-EVENT-REPORT on the requester's association if still open, else on a new one.

    A new association goes to an address the node may have (``nodes.node_connect_address``), and to a node
    with a pinned certificate over DICOM TLS (``node_tls``); or there is none, and the return value says why.
    """
    if assoc.is_established:
        # Only for this answer: the association's other waits (C-GET's stores on it) keep their timeout.
        usual_timeout, assoc.dimse_timeout = assoc.dimse_timeout, SAME_ASSOCIATION_ANSWER_SECONDS
        try:
            status, _ = assoc.send_n_event_report(
                event_info, event_type, StorageCommitmentPushModel, COMMITMENT_INSTANCE
            )
            # An empty status means no answer came (the association went away): report again anew.
            if "Status" in status:
                return "same association"
        except (RuntimeError, ValueError):
            pass  # released meanwhile: open a new association
        finally:
            assoc.dimse_timeout = usual_timeout
    ae = AE(ae_title=info.called_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = REPORT_TIMEOUT
    ae.add_requested_context(StorageCommitmentPushModel)
    # On a new association the archive is the requester yet stays the SCP (PS3.4 J.3.3, role selection).
    role = build_role(StorageCommitmentPushModel, scp_role=True, scu_role=False)
    try:
        # The checked address itself, not the name again: DNS could answer otherwise by now.
        address = nodes.node_connect_address(node)
        tls = node_tls.node_client_tls(node)
    except (nodes.NodeAddressRefused, node_tls.NodeTLSError) as exc:
        logger.warning("Storage commitment: report to node %s not sent: %s", node.uuid, exc.message)
        return f"not sent: {exc.message}"
    report_assoc = ae.associate(address, node.port, ae_title=node.ae_title, ext_neg=[role],
                                tls_args=tls.tls_args if tls is not None else None)
    if not report_assoc.is_established:
        if tls is not None and tls.failure is not None:
            logger.warning("Storage commitment: report to node %s not sent: %s", node.uuid, tls.failure.message)
            return f"not sent: {tls.failure.message}"
        logger.warning("Storage commitment: node %s could not be reached for the report", node.uuid)
        return "unreachable"
    try:
        status, _ = report_assoc.send_n_event_report(
            event_info, event_type, StorageCommitmentPushModel, COMMITMENT_INSTANCE
        )
    finally:
        report_assoc.release()
    return "new association" if "Status" in status else "no answer"


COMMITMENT_HANDLERS: list[EventHandlerType] = [(evt.EVT_N_ACTION, handle_action)]

"""pynetdicom event handlers: association control and the C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET services.

Every association runs in its own thread. The handlers there use the Django ORM, so each one starts
and ends with ``close_old_connections()`` (as a request would), except C-STORE, which keeps the
association's connection from one instance to the next; the connection is closed when the association
is released or aborted: a long-running listener must not pile up database connections.

C-STOREs of the associations one node has open from one address go through one group commit
(``ingest.GroupCommit``): what they hand in at the same moment is ingested as one batch, and each C-STORE
is answered, with its own status, once its batch has returned (its object durable, its rows committed).
A lone association is never held back: a batch waits (20 ms at most) only for associations that sent an
image a moment ago and are still open.

C-STORE statuses (PS3.4 B.2.3, PS3.7 C): success when the instance is stored or already present with
the same content; 0xA700 (out of resources) when the clinic's quota is used up or storage is
unreachable, so the modality keeps the image and retries later; 0xC000 (cannot understand) for data
that is not valid DICOM; 0x0111 (duplicate SOP instance, a failure) when an instance with the same
SOP Instance UID but different content is already stored: the archive keeps the first one, and a
failure (not a warning) makes the sender keep its copy and shows the conflict to an operator; 0xA900
(data set does not match SOP class, nothing stored) when the data set's SOP Instance UID is not the
request's Affected SOP Instance UID; 0xB007 (warning) when the data set of another SOP class than the
request's was stored.

An association keeps the node it was accepted for, but the node may be removed, or its inbound access
switched off, while the association stays open: each C-FIND, C-MOVE and C-GET checks again that it may
still call in, and C-STOREs do so at most every ``NODE_RECHECK_SECONDS``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import ssl
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, connection
from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.events import Event, EventHandlerType

from studies import ingest
from studies.archive import readahead
from studies.archive.errors import ArchiveError, StorageUnavailable
from studies.dimse import nodes
from studies.dimse import tls as node_tls
from studies.dimse.find import LEVELS as FIND_LEVELS
from studies.dimse.find import QueryError, find_matches
from studies.dimse.move import (
    accepted_syntaxes,
    instance_dataset,
    refusal_contexts,
    retrieve_instances,
    send_syntax,
    storage_contexts,
)
from studies.errors import (
    AnnouncedUidMismatch,
    InstanceConflict,
    InstanceHeld,
    InvalidDicom,
    QuotaExceeded,
    StudyBeingPurged,
    StudyMismatch,
)
from studies.models import DicomNode, Instance
from studies.transcoding import TranscodeError, dataset_transcode
from tenants.audit import audit_record
from tenants.models import Clinic

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
NOT_AUTHORIZED = 0x0124
DUPLICATE_SOP_INSTANCE = 0x0111
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
# Held in quarantine for review (patient differs from the stored study's); a failure, so the sender keeps it.
HELD_FOR_REVIEW = 0xC410
PROCESSING_FAILURE = 0x0110
# PS3.4 B.2.3 "Error: Data Set does not match SOP Class" (a failure, nothing stored): the failure status
# that says the data set is not what the request names; 0xC000 would mean it could not be parsed.
DATA_SET_DOES_NOT_MATCH = 0xA900
# PS3.4 B.2.3 "Warning: Data Set does not match SOP Class": stored, under the data set's own SOP class.
SOP_CLASS_MISMATCH_WARNING = 0xB007
# C-MOVE "Refused: Move Destination unknown": pynetdicom's answer when the destination's association fails.
MOVE_DESTINATION_UNKNOWN = 0xA801
# C-STOREs re-check that their node may still call in at most this often (seconds), not once per image.
NODE_RECHECK_SECONDS = 5.0

# A-ASSOCIATE-RJ: (result, source, diagnostic), PS3.8 9.3.4.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service user, calling AE title not recognized
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # rejected-permanent, service user, called AE title not recognized
REJECT_TRANSIENT = (0x02, 0x01, 0x01)  # rejected-transient, service user, no reason given

# Instances listed in the audit entry of one retrieve, at most.
AUDIT_STUDY_LIMIT = 50


# A spooled C-STORE data set and the SOP Instance UID its request announced (Affected SOP Instance UID).
_Received = tuple[str, str]


@dataclass
class _AccessCheck:
    """When the association's node was last found registered and allowed to call in (monotonic clock).

    ``revoked`` once it was found removed or no longer allowed: every later request is refused (and
    audited under the association's clinic) without a look-up.
    """

    checked_at: float = field(default_factory=time.monotonic)
    revoked: bool = False


@dataclass(frozen=True)
class AssociationInfo:
    """Who is on the other end of an accepted association."""

    clinic: Clinic
    node: DicomNode
    calling_ae: str
    called_ae: str
    address: str
    tls: bool = False
    # The group commit its C-STOREs go through, shared with the node's other associations from this address.
    store: ingest.GroupCommit[_Received, ingest.ItemResult] | None = field(default=None, compare=False, repr=False)
    access: _AccessCheck = field(default_factory=_AccessCheck, compare=False, repr=False)


_associations: weakref.WeakKeyDictionary[Association, AssociationInfo] = weakref.WeakKeyDictionary()
_associations_lock = threading.Lock()
# One group commit per (clinic, node, calling AE, address), alive while one of its associations is.
_store_groups: weakref.WeakValueDictionary[
    tuple[int, int, str, str], ingest.GroupCommit[_Received, ingest.ItemResult]
] = weakref.WeakValueDictionary()


def _store_group(
    *, clinic: Clinic, node: DicomNode, calling_ae: str, address: str
) -> ingest.GroupCommit[_Received, ingest.ItemResult]:
    """The group commit of this node's associations from this address (made by the first; lock held)."""
    key = (clinic.pk, node.pk, calling_ae, address)
    group = _store_groups.get(key)
    if group is None:
        # The group's lookups (studies.ingest.lookups) are reused by all its associations for a few seconds.
        origin = ingest.Origin.dicom(node=node, address=address, lookups=ingest.Lookups())
        group = ingest.GroupCommit(functools.partial(_ingest_batch, clinic=clinic, origin=origin))
        _store_groups[key] = group
    return group


def _ingest_batch(received: list[_Received], *, clinic: Clinic, origin: ingest.Origin) -> list[ingest.ItemResult]:
    return ingest.instances_ingest(clinic=clinic, paths=[path for path, _ in received], origin=origin,
                                   announced_uids=[uid for _, uid in received])


def association_info(assoc: Association) -> AssociationInfo | None:
    with _associations_lock:
        return _associations.get(assoc)


def still_allowed(assoc: Association, info: AssociationInfo, *, max_age: float = 0.0) -> bool:
    """Say whether the association's node is still registered and may call in (a query, unless checked lately).

    A node found removed (or no longer allowed in) stays so for the rest of the association: every later
    request on it is refused without a look-up.
    """
    if info.access.revoked:
        return False
    now = time.monotonic()
    if max_age and now - info.access.checked_at < max_age:
        return True
    if nodes.dicom_node_may_call(clinic=info.clinic, node=info.node):
        info.access.checked_at = now
        return True
    info.access.revoked = True
    if info.store is not None and assoc.ident is not None:
        info.store.forget(assoc.ident)
    logger.info("DIMSE: node %s of clinic %s was removed or may no longer call in; refusing its requests",
                info.node.uuid, info.clinic.pk)
    return False


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        # Error Comment is LO: 64 characters at most.
        status.ErrorComment = comment[:64]
    return status


def _audit_association(
    *, clinic: Clinic | None, node: DicomNode | None, calling_ae: str, called_ae: str, address: str, result: str,
    reason: str = "", tls: bool = False,
) -> None:
    details: dict[str, object] = {"calling_ae": calling_ae, "called_ae": called_ae}
    if reason:
        details["reason"] = reason
    if tls:
        details["tls"] = True
    audit_record(
        clinic=clinic, action="dimse.association", actor_label=f"dicom:{calling_ae}"[:255],
        object_type="dicom_node" if node else "", object_id=str(node.uuid) if node else "",
        result=result, ip_address=address or None, details=details,
    )


def _decide(
    *, called_ae: str, calling_ae: str, address: str, certificate_sha256: str = ""
) -> tuple[Clinic | None, DicomNode | None, str]:
    """Return (clinic, node, reason); a non-empty reason means reject."""
    clinic = Clinic.objects.filter(ae_title=called_ae).first()
    if clinic is None:
        return None, None, "called AE title not recognized"
    node = nodes.dicom_node_inbound_get(clinic=clinic, ae_title=calling_ae)
    if node is None:
        return clinic, None, "calling AE title not recognized"
    reason = nodes.node_refusal(node=node, peer_address=address, peer_certificate_sha256=certificate_sha256)
    return clinic, node, reason


def _peer_certificate_sha256(assoc: Association) -> str:
    """The SHA-256 (hex) of the client certificate of a DICOM TLS association; "" over plain TCP."""
    sock = getattr(assoc.dul.socket, "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return ""
    der = sock.getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest() if der else ""


def _rejections_key(address: str) -> str:
    return f"dimse-rejected:{address}"


def _is_throttled(address: str) -> bool:
    """Whether this address was refused too often lately: AE titles are short and guessable."""
    return (cache.get(_rejections_key(address)) or 0) >= settings.DICOM_REJECT_LIMIT


def _count_rejection(address: str) -> None:
    # In the shared cache (Redis in production), so every listener process sees the same count; the
    # window starts at the first refusal and is not extended by later ones.
    key = _rejections_key(address)
    if not cache.add(key, 1, settings.DICOM_REJECT_WINDOW_SECONDS):
        try:
            cache.incr(key)
        except ValueError:  # expired in between
            cache.add(key, 1, settings.DICOM_REJECT_WINDOW_SECONDS)


def _audit_throttled(*, called_ae: str, calling_ae: str, address: str) -> None:
    """One entry per address and window (in the called clinic's trail when there is one), not one per try."""
    if not cache.add(f"dimse-throttle-audited:{address}", 1, settings.DICOM_REJECT_WINDOW_SECONDS):
        return
    clinic = Clinic.objects.filter(ae_title=called_ae).first()
    audit_record(
        clinic=clinic, action="dimse.association_throttled", actor_label=f"dicom:{calling_ae}"[:255],
        result="denied", ip_address=address or None,
        details={"calling_ae": calling_ae, "called_ae": called_ae, "limit": settings.DICOM_REJECT_LIMIT,
                 "window_seconds": settings.DICOM_REJECT_WINDOW_SECONDS},
    )
    logger.warning("DIMSE associations from %s throttled after %d refusals", address, settings.DICOM_REJECT_LIMIT)


def _prefer_requested_syntaxes(assoc: Association) -> None:
    """Accept, per SOP class, the first transfer syntax the caller proposed that we support.

    pynetdicom picks by the acceptor's order; a modality lists its own preference (typically the
    syntax its images are already in) first. Taking ours instead would make it convert, and many
    senders cannot decompress (or would have to compress lossily) on the fly.
    """
    supported = {cx.abstract_syntax: cx for cx in assoc.acceptor.supported_contexts}
    done: set[str] = set()
    primitive = assoc.requestor.primitive
    if primitive is None:
        return
    for requested in primitive.presentation_context_definition_list:
        syntax = requested.abstract_syntax
        if syntax is None or syntax in done:
            continue
        ours = supported.get(syntax)
        if ours is None:
            continue
        done.add(syntax)
        offered = list(ours.transfer_syntax)
        preferred = [ts for ts in requested.transfer_syntax if ts in offered]
        # The association's own deep copy of the AE's contexts: this changes nothing for others.
        reordered: list[str | bytes | UID] = [*preferred, *(ts for ts in offered if ts not in preferred)]
        ours.transfer_syntax = reordered


def _accept_or_reject(assoc: Association, *, called_ae: str, calling_ae: str, address: str) -> tuple[int, int, int] | None:
    """Decide on the association; return the A-ASSOCIATE-RJ reason, or None having recorded it as accepted."""
    certificate = _peer_certificate_sha256(assoc)
    clinic, node, reason = _decide(called_ae=called_ae, calling_ae=calling_ae, address=address,
                                   certificate_sha256=certificate)
    if reason:
        _count_rejection(address)
        _audit_association(clinic=clinic, node=node, calling_ae=calling_ae, called_ae=called_ae,
                           address=address, result="rejected", reason=reason, tls=bool(certificate))
        logger.info("DIMSE association rejected: %s (calling %s from %s)", reason, calling_ae, address)
        return REJECT_CALLED_AE if clinic is None else REJECT_CALLING_AE
    assert clinic is not None and node is not None
    _prefer_requested_syntaxes(assoc)
    with _associations_lock:
        store = _store_group(clinic=clinic, node=node, calling_ae=calling_ae, address=address)
        _associations[assoc] = AssociationInfo(clinic, node, calling_ae, called_ae, address, tls=bool(certificate),
                                               store=store)
    return None


def handle_requested(event: Event) -> None:
    """Accept or reject an A-ASSOCIATE-RQ: the called AE picks the clinic, the calling AE must be registered."""
    assoc = event.assoc
    primitive = assoc.requestor.primitive
    if primitive is None:
        return  # no A-ASSOCIATE-RQ to decide on: nothing is recorded, so every request is refused
    called_ae = str(primitive.called_ae_title or "").strip()
    calling_ae = str(primitive.calling_ae_title or "").strip()
    address = str(assoc.requestor.address or "")
    reject: tuple[int, int, int] | None = None
    close_old_connections()
    try:
        if _is_throttled(address):
            # Refused without looking anything up, so that guessing learns nothing, even the right title.
            reject = REJECT_TRANSIENT
            _audit_throttled(called_ae=called_ae, calling_ae=calling_ae, address=address)
        else:
            reject = _accept_or_reject(assoc, called_ae=called_ae, calling_ae=calling_ae, address=address)
    except Exception:
        # pynetdicom would go on and accept if this handler failed: fail closed instead.
        logger.exception("DIMSE association check failed; rejecting")
        reject = REJECT_TRANSIENT
    if reject is not None:
        connection.close()
        assoc.acse.send_reject(*reject)
        assoc.kill()


def handle_accepted(event: Event) -> None:
    info = association_info(event.assoc)
    if info is None:
        return
    close_old_connections()
    _audit_association(clinic=info.clinic, node=info.node, calling_ae=info.calling_ae, called_ae=info.called_ae,
                       address=info.address, result="success", tls=info.tls)
    logger.info("DIMSE association accepted: clinic %s, calling %s from %s", info.clinic.pk, info.calling_ae,
                info.address)


def handle_rejected(event: Event) -> None:
    """pynetdicom itself rejected an association we had allowed (e.g. too many at once)."""
    info = association_info(event.assoc)
    if info is None:
        return
    close_old_connections()
    _audit_association(clinic=info.clinic, node=info.node, calling_ae=info.calling_ae, called_ae=info.called_ae,
                       address=info.address, result="rejected", reason="association limit reached")
    _forget(event)


def _forget(event: Event) -> None:
    with _associations_lock:
        info = _associations.pop(event.assoc, None)
    if info is not None and info.store is not None and event.assoc.ident is not None:
        info.store.forget(event.assoc.ident)
    if threading.current_thread() is event.assoc:
        connection.close()


def handle_closed(event: Event) -> None:
    """Released or aborted: forget the association and close its thread's database connection."""
    _forget(event)


def handle_echo(event: Event) -> int:
    """C-ECHO: success while the association's node may still call in, as for every other request."""
    info = association_info(event.assoc)
    if info is None:
        return NOT_AUTHORIZED
    close_old_connections()
    try:
        return SUCCESS if still_allowed(event.assoc, info) else NOT_AUTHORIZED
    finally:
        close_old_connections()


def _ingest(*, info: AssociationInfo, path: str, request: C_STORE) -> Dataset | int:
    clinic = info.clinic
    assert info.store is not None
    try:
        # Ingest refuses the file, before storing anything, unless it is the instance the request names: a
        # success for the Affected SOP Instance UID when the file went in under another would let the
        # modality delete an image we do not hold.
        item = info.store.submit((path, str(request.AffectedSOPInstanceUID or "").strip()))
    except StorageUnavailable as exc:
        logger.warning("C-STORE: storage refused for clinic %s (%s)", clinic.pk, exc.code)
        return _status(OUT_OF_RESOURCES, "Storage is full or unavailable; retry later")
    except ArchiveError:
        logger.exception("C-STORE: archive unavailable for clinic %s", clinic.pk)
        return _status(OUT_OF_RESOURCES, "Storage is unavailable; retry later")
    except OSError as exc:
        # The temporary file beside the listener could not be written (a full disk): retryable too.
        logger.warning("C-STORE: could not spool the data set for clinic %s: %s", clinic.pk, exc.strerror)
        return _status(OUT_OF_RESOURCES, "Storage is full or unavailable; retry later")
    status = _store_status(clinic=clinic, error=item.error)
    sop_class_uid = item.parsed.sop_class_uid if item.parsed is not None else ""
    if status == SUCCESS and sop_class_uid and sop_class_uid != str(request.AffectedSOPClassUID or "").strip():
        return _status(SOP_CLASS_MISMATCH_WARNING, "Stored, but the data set is of another SOP class")
    return status


def _store_status(*, clinic: Clinic, error: Exception | None) -> Dataset | int:
    """The C-STORE status of one instance of a batch: success, or why ingest refused it."""
    if error is None:
        return SUCCESS
    if isinstance(error, StorageUnavailable):
        logger.warning("C-STORE: storage refused for clinic %s (%s)", clinic.pk, error.code)
    elif not isinstance(error, _SENDER_REFUSALS):
        logger.error("C-STORE: instance of clinic %s refused: %s", clinic.pk, type(error).__name__)
    return _status(*store_refusal(error))


# Refusals that are the sender's file or the clinic's state, not the archive's fault: not logged as errors.
_SENDER_REFUSALS = (QuotaExceeded, StudyBeingPurged, InstanceHeld, AnnouncedUidMismatch, StudyMismatch, InvalidDicom,
                    InstanceConflict)


def store_refusal(error: Exception) -> tuple[int, str]:
    """The C-STORE failure status and Error Comment for why ingest refused an instance.

    One rule for every C-STORE we answer: the listener's, and a migration's C-GET (we are the storage SCP of
    its sub-operations), so a peer hears the same answer whichever side opened the association.
    """
    if isinstance(error, QuotaExceeded):
        return OUT_OF_RESOURCES, error.message
    if isinstance(error, StudyBeingPurged):
        return OUT_OF_RESOURCES, "Study is being purged from the trash; retry later"
    if isinstance(error, InstanceHeld):
        return HELD_FOR_REVIEW, "Held for review: patient differs from the study's"
    if isinstance(error, (AnnouncedUidMismatch, StudyMismatch)):
        return DATA_SET_DOES_NOT_MATCH, error.message
    if isinstance(error, InvalidDicom):
        return CANNOT_UNDERSTAND, error.message
    if isinstance(error, InstanceConflict):
        return DUPLICATE_SOP_INSTANCE, "SOP Instance UID already stored with different content"
    if isinstance(error, StorageUnavailable):
        # Full or unreachable storage: a retryable refusal, so the sender keeps the image and sends again.
        return OUT_OF_RESOURCES, "Storage is full or unavailable; retry later"
    return OUT_OF_RESOURCES, "Storage is unavailable; retry later"


def _connection_keep() -> None:
    """Between the C-STOREs of one association: keep the thread's database connection unless it broke.

    Each association runs in its own thread with its own connection, closed when the association ends
    (``handle_closed``). Closing it after every instance, as ``close_old_connections`` does where
    CONN_MAX_AGE is 0 (SQLite's setting until issue 12), would cost a new connection per image: about a third of an
    instance's time on one association. A connection that saw an error and no longer answers is dropped.
    """
    if connection.connection is not None and connection.errors_occurred:
        if connection.is_usable():
            connection.errors_occurred = False
        else:
            connection.close()


def handle_store(event: Event) -> Dataset | int:
    """Store one instance through the same ingest path as browser uploads."""
    info = association_info(event.assoc)
    if info is None:
        return NOT_AUTHORIZED
    _connection_keep()
    try:
        if not still_allowed(event.assoc, info, max_age=NODE_RECHECK_SECONDS):
            return NOT_AUTHORIZED
        try:
            # Set by scp.ae_build: pynetdicom spooled the incoming data set to a Part 10 file already.
            path = str(event.dataset_path)
        except AttributeError:
            path = ""
        if path:
            return _ingest(info=info, path=path, request=cast(C_STORE, event.request))
        try:
            fd, tmp_path = tempfile.mkstemp(suffix=".dcm", dir=settings.FILE_UPLOAD_TEMP_DIR)
        except OSError:
            logger.warning("C-STORE: no room for a temporary file for clinic %s", info.clinic.pk)
            return _status(OUT_OF_RESOURCES, "Storage is full or unavailable; retry later")
        try:
            try:
                with os.fdopen(fd, "wb") as tmp:
                    tmp.write(event.encoded_dataset(include_meta=True))
            except OSError:
                return _status(OUT_OF_RESOURCES, "Storage is full or unavailable; retry later")
            return _ingest(info=info, path=tmp_path, request=cast(C_STORE, event.request))
        finally:
            os.unlink(tmp_path)
    finally:
        _connection_keep()


def _audit_find_refused(info: AssociationInfo, *, level: str, reason: str, status: int) -> None:
    # The level only when it is one (it is the caller's free text otherwise), and a reason that quotes no value.
    audit_record(clinic=info.clinic, action="dimse.find", actor_label=f"dicom:{info.calling_ae}",
                 object_type="dicom_node", object_id=str(info.node.uuid), result="rejected",
                 ip_address=info.address or None,
                 details={"level": level if level in FIND_LEVELS else "", "reason": reason,
                          "status": f"0x{status:04X}"})


def handle_find(event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    info = association_info(event.assoc)
    if info is None:
        yield NOT_AUTHORIZED, None
        return
    close_old_connections()
    sop_class_uid = str(event.request.AffectedSOPClassUID)
    matched = 0
    level = ""
    try:
        if not still_allowed(event.assoc, info):
            _audit_find_refused(info, level="", reason="node removed or may no longer call in",
                                status=NOT_AUTHORIZED)
            yield NOT_AUTHORIZED, None
            return
        identifier = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        for answer in find_matches(clinic=info.clinic, identifier=identifier, sop_class_uid=sop_class_uid):
            if event.is_cancelled:
                yield CANCEL, None
                return
            matched += 1
            yield PENDING, answer
        audit_record(clinic=info.clinic, action="dimse.find", actor_label=f"dicom:{info.calling_ae}",
                     object_type="dicom_node", object_id=str(info.node.uuid), ip_address=info.address or None,
                     details={"level": level, "matches": matched})
    except QueryError as exc:
        _audit_find_refused(info, level=level, reason=exc.reason, status=exc.status)
        yield _status(exc.status, str(exc)), None
        return
    finally:
        close_old_connections()
    yield SUCCESS, None


def _retrieve_setup(event: Event, info: AssociationInfo, *, operation: str, destination: str) -> list[Instance]:
    identifier = event.identifier
    sop_class_uid = str(event.request.AffectedSOPClassUID)
    instances = list(
        retrieve_instances(clinic=info.clinic, identifier=identifier, sop_class_uid=sop_class_uid)
        .select_related("series__study")
        .defer("metadata")
    )
    study_uuids = sorted({str(i.series.study.uuid) for i in instances})
    audit_record(
        clinic=info.clinic, action="dimse.retrieve", actor_label=f"dicom:{info.calling_ae}",
        object_type="dicom_node", object_id=str(info.node.uuid), ip_address=info.address or None,
        details={"operation": operation, "destination": destination, "instances": len(instances),
                 "studies": study_uuids[:AUDIT_STUDY_LIMIT]},
    )
    return instances


def _audit_retrieve_refused(info: AssociationInfo, *, operation: str, destination: str, status: int) -> None:
    # A fixed reason: a QueryError's message may quote the identifier's values (patient data).
    audit_record(clinic=info.clinic, action="dimse.retrieve", actor_label=f"dicom:{info.calling_ae}",
                 object_type="dicom_node", object_id=str(info.node.uuid), result="rejected",
                 ip_address=info.address or None,
                 details={"operation": operation, "destination": destination, "reason": "identifier refused",
                          "status": f"0x{status:04X}"})


def _send_each(
    event: Event, info: AssociationInfo, instances: list[Instance], store_assoc: Callable[[], Association | None]
) -> Iterator[tuple[int, Any]]:
    """Yield each instance for a C-STORE sub-operation, converted when the peer did not accept its syntax.

    A helper thread reads, decrypts and parses the next instance while pynetdicom sends the current
    one (``readahead.items_read_ahead``, two ahead at most, so memory stays a few instances).
    """
    accepted: dict[str, set[str]] | None = None
    assoc = store_assoc()
    accepted = accepted_syntaxes(assoc.accepted_contexts) if assoc is not None else {}

    def prepare(instance: Instance) -> Dataset:
        target = send_syntax(
            stored=instance.transfer_syntax_uid, accepted=accepted.get(instance.sop_class_uid, set())
        )
        dataset = instance_dataset(clinic=info.clinic, instance=instance)
        if target is not None:
            dataset_transcode(dataset, target)
        return dataset

    prepared = readahead.items_read_ahead(instances, prepare)
    try:
        for instance, dataset in zip(instances, prepared, strict=True):
            if event.is_cancelled:
                yield CANCEL, None
                return
            if isinstance(dataset, (ArchiveError, TranscodeError)):
                logger.error(
                    "Retrieve: instance %s could not be read or converted", instance.uuid, exc_info=dataset
                )
                # Anything but a dataset makes pynetdicom count a failed sub-operation and go on.
                yield PENDING, "unreadable"
                continue
            if isinstance(dataset, BaseException):
                raise dataset
            yield PENDING, dataset
    finally:
        prepared.close()  # type: ignore[attr-defined]


class _MoveRefusal:
    """Puts why into pynetdicom's own 0xA801 answer to one C-MOVE whose destination cannot be called safely.

    When the destination's association may not or cannot be opened (its host has no address we may connect
    to; it needs DICOM TLS and our certificate is not set, the node does not speak TLS, or its certificate
    does not match its pin) pynetdicom answers 0xA801 itself, without an Error Comment and without running
    the handler again: this adds the comment on the way out and audits it.
    """

    def __init__(self, event: Event, info: AssociationInfo, *, destination: str) -> None:
        self.assoc = event.assoc
        self.info = info
        self.message_id = event.request.MessageID
        self.destination = destination
        self.tls: node_tls.ClientTLS | None = None
        self.failure: node_tls.NodeTLSError | nodes.NodeAddressRefused | None = None
        self.answered = False
        self.assoc.bind(evt.EVT_DIMSE_SENT, self._sent)

    def close(self) -> None:
        self.assoc.unbind(evt.EVT_DIMSE_SENT, self._sent)

    def _sent(self, event: Event) -> None:
        command = event.message.command_set
        if (self.answered or type(event.message).__name__ != "C_MOVE_RSP"
                or command.get("MessageIDBeingRespondedTo") != self.message_id):
            return
        self.answered = True
        failure = self.failure or (self.tls.failure if self.tls is not None else None)
        if failure is None or command.get("Status") != MOVE_DESTINATION_UNKNOWN:
            return
        command.ErrorComment = failure.comment
        # pynetdicom counted the command set's length before this event: count it again with the comment.
        del command.CommandGroupLength
        command.CommandGroupLength = len(cast(bytes, encode(command, True, True)))
        # Recorded here for every cause: after a failed handshake or pin the handler never runs again.
        _audit_move_refused(self.info, destination=self.destination, failure=failure)


def _audit_move_refused(
    info: AssociationInfo, *, destination: str, failure: node_tls.NodeTLSError | nodes.NodeAddressRefused
) -> None:
    logger.warning("C-MOVE of clinic %s to %s not sent: %s", info.clinic.pk, destination, failure.message)
    audit_record(clinic=info.clinic, action="dimse.retrieve", actor_label=f"dicom:{info.calling_ae}",
                 object_type="dicom_node", object_id=str(info.node.uuid), result="failure",
                 ip_address=info.address or None,
                 details={"operation": "C-MOVE", "destination": destination, "reason": failure.message})


def handle_move(event: Event) -> Iterator[Any]:
    """C-MOVE: send the matches to a registered destination (0xA801 for any other AE title).

    An identifier that cannot be retrieved (no unique key, a wildcard in it, a level the model lacks)
    is answered with its QueryError's status (0xA900), and nothing is sent. The destination's association
    goes to the address of its host checked now (``nodes.node_connect_address``), and to a destination with
    a pinned certificate over DICOM TLS only (``node_tls``); when either cannot be, the answer is 0xA801
    with the reason in its Error Comment, and nothing is sent.
    """
    info = association_info(event.assoc)
    destination_ae = str(event.move_destination or "").strip()
    close_old_connections()
    refusal: Dataset | None = None
    move_refusal: _MoveRefusal | None = None
    try:
        try:
            if info is not None and not still_allowed(event.assoc, info):
                # pynetdicom answers a C-MOVE without opening a sub-association only with 0xA801.
                info = None
            node = nodes.dicom_node_destination_get(clinic=info.clinic, ae_title=destination_ae) if info else None
            if info is None or node is None:
                if info is not None:
                    audit_record(clinic=info.clinic, action="dimse.retrieve", actor_label=f"dicom:{info.calling_ae}",
                                 result="rejected", ip_address=info.address or None,
                                 details={"operation": "C-MOVE", "destination": destination_ae,
                                          "reason": "move destination not registered"})
                yield None, None
                return
            if node.tls_certificate_sha256:
                move_refusal = _MoveRefusal(event, info, destination=destination_ae)
            try:
                # pynetdicom is given the checked address itself, not the name again: DNS could answer
                # otherwise by the time it connects.
                address = nodes.node_connect_address(node)
                if move_refusal is not None:
                    move_refusal.tls = node_tls.node_client_tls(node)
            except (nodes.NodeAddressRefused, node_tls.NodeTLSError) as exc:
                move_refusal = move_refusal or _MoveRefusal(event, info, destination=destination_ae)
                move_refusal.failure = exc
                yield None, None
                return
            try:
                instances = _retrieve_setup(event, info, operation="C-MOVE", destination=destination_ae)
            except QueryError as exc:
                refusal = _status(exc.status, str(exc))
                _audit_retrieve_refused(info, operation="C-MOVE", destination=destination_ae, status=exc.status)
        finally:
            close_old_connections()
        # Over DICOM TLS to a pinned node, the refusal's association too: it names both AE titles.
        tls_args = {"tls_args": move_refusal.tls.tls_args} if move_refusal is not None and move_refusal.tls else {}
        if refusal is not None:
            # pynetdicom 3 sends a handler's own status only after the destination's association is open
            # and a sub-operation announced: that association carries no image and is released at once,
            # and the failure counts the one announced sub-operation as failed. A destination that cannot
            # be reached makes it 0xA801 (move destination unknown) instead.
            yield address, node.port, {"contexts": refusal_contexts(), **tls_args}
            yield 1
            yield refusal, None
            return
        # The sub-association is opened by pynetdicom; its accepted contexts decide what is converted.
        opened: list[Association] = []
        handlers = [(evt.EVT_ACCEPTED, lambda accepted: opened.append(accepted.assoc))]
        yield address, node.port, {"contexts": storage_contexts(instances), "evt_handlers": handlers, **tls_args}
        yield len(instances)
        yield from _send_each(event, info, instances, lambda: opened[0] if opened else None)
        close_old_connections()
    finally:
        if move_refusal is not None:
            move_refusal.close()
            # Its refusal may have been audited after the handler last ran (_MoveRefusal._sent).
            close_old_connections()


def handle_get(event: Event) -> Iterator[Any]:
    """C-GET: send the matches back over the same association, in the requester's storage contexts."""
    info = association_info(event.assoc)
    close_old_connections()
    refusal: Dataset | None = None
    instances: list[Instance] = []
    try:
        if info is None or not still_allowed(event.assoc, info):
            refusal = _status(NOT_AUTHORIZED)
        else:
            instances = _retrieve_setup(event, info, operation="C-GET", destination=info.calling_ae)
    except QueryError as exc:
        refusal = _status(exc.status, str(exc))
        if info is not None:
            _audit_retrieve_refused(info, operation="C-GET", destination=info.calling_ae, status=exc.status)
    finally:
        close_old_connections()
    if refusal is not None or info is None:
        # pynetdicom takes a status only after the number of sub-operations, and answers 0 with success;
        # one announced sub-operation is then counted as failed.
        yield 1
        yield refusal, None
        return
    yield len(instances)
    # C-GET sends over the requester's own association, in the storage contexts it proposed.
    yield from _send_each(event, info, instances, lambda: event.assoc)
    close_old_connections()


HANDLERS: list[EventHandlerType] = [
    (evt.EVT_REQUESTED, handle_requested),
    (evt.EVT_ACCEPTED, handle_accepted),
    (evt.EVT_REJECTED, handle_rejected),
    (evt.EVT_RELEASED, handle_closed),
    (evt.EVT_ABORTED, handle_closed),
    (evt.EVT_C_ECHO, handle_echo),
    (evt.EVT_C_STORE, handle_store),
    (evt.EVT_C_FIND, handle_find),
    (evt.EVT_C_MOVE, handle_move),
    (evt.EVT_C_GET, handle_get),
]

"""The DIMSE listener: one pynetdicom application entity serving every clinic.

The called AE title of each association selects the clinic (``Clinic.ae_title``); the calling AE
title must be one of that clinic's registered nodes (``handlers.handle_requested``). The listener
accepts every storage SOP class pynetdicom knows, in the common transfer syntaxes, plus Verification
and Query/Retrieve (Patient Root and Study Root: FIND, MOVE, GET), and Storage Commitment Push Model.
"""

from __future__ import annotations

import socket
import ssl

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from studies.dimse.commitment import COMMITMENT_HANDLERS
from studies.dimse.handlers import HANDLERS

# Offered for storage; with several proposed, pynetdicom accepts the first the caller proposed.
STORAGE_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]
QUERY_RETRIEVE_SOP_CLASSES = [
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
]
QUERY_TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]

# Seconds: waiting for an association request, for a DIMSE message, and on an idle connection.
ACSE_TIMEOUT = 30
DIMSE_TIMEOUT = 120
NETWORK_TIMEOUT = 120
# Largest P-DATA PDU we accept. pynetdicom's default (16 KiB) makes a 0.5 MB instance 32 PDUs; 1 MiB
# cuts the per-PDU overhead while a PDU still fits comfortably in memory.
MAXIMUM_PDU_SIZE = 1024 * 1024


def ae_build(*, ae_title: str, max_associations: int = 32) -> AE:
    """Build the listener's application entity (also the calling AE of C-MOVE sub-associations)."""
    # Received data sets are spooled straight to a Part 10 temporary file, not decoded in memory:
    # C-STORE hands ingest a file either way, and concurrent large instances stay off the heap.
    _config.STORE_RECV_CHUNKED_DATASET = True
    ae = AE(ae_title=ae_title)
    # The called AE title selects the clinic and the calling AE is checked per clinic, both in
    # handlers.handle_requested, so pynetdicom's own global checks are off.
    ae.require_called_aet = False
    ae.require_calling_aet = []
    ae.maximum_associations = max_associations
    ae.acse_timeout = ACSE_TIMEOUT
    ae.dimse_timeout = DIMSE_TIMEOUT
    ae.network_timeout = NETWORK_TIMEOUT
    ae.maximum_pdu_size = MAXIMUM_PDU_SIZE
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is None:
            continue  # pynetdicom's list names a SOP class in each; the type allows none
        # scp_role=True accepts a C-GET requester acting as Storage SCP on this context.
        ae.add_supported_context(context.abstract_syntax, STORAGE_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    ae.add_supported_context(Verification, QUERY_TRANSFER_SYNTAXES)
    ae.add_supported_context(StorageCommitmentPushModel, QUERY_TRANSFER_SYNTAXES)
    for sop_class in QUERY_RETRIEVE_SOP_CLASSES:
        ae.add_supported_context(sop_class, QUERY_TRANSFER_SYNTAXES)
    # C-MOVE sub-associations propose only the contexts the moved instances need (see move.py).
    return ae


class _DeferredHandshakeContext(ssl.SSLContext):
    """Leaves the TLS handshake to the association's own thread.

    pynetdicom wraps each accepted socket in its accept loop; a handshake there would let one client
    that connects and stays silent hold up every other TLS connection.
    """

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock, server_side=server_side, do_handshake_on_connect=False, suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname, session=session,
        )


def tls_context(*, certificate: str, private_key: str, ca_file: str) -> ssl.SSLContext:
    """The DICOM TLS (PS3.15 Annex B) server context: our certificate, and a client certificate required.

    Client certificates must chain to ``ca_file``; which certificate may be which node is pinned per
    node (``DicomNode.tls_certificate_sha256``). TLS 1.2 or later, as BCP 195 (PS3.15 B.9) asks.
    """
    context = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_verify_locations(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(certfile=certificate, keyfile=private_key)
    return context


def _no_delay(event: Event) -> None:
    # Each C-STORE answer is one small PDU its sender waits for before the next image; Nagle's algorithm
    # would hold it back behind the peer's delayed ACK. pynetdicom leaves accepted sockets as they are.
    raw = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if raw is not None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def scp_start(
    *, host: str, port: int, ae_title: str, max_associations: int = 32, block: bool = True,
    ssl_context: ssl.SSLContext | None = None,
) -> ThreadedAssociationServer | None:
    """Listen for associations; with ``block=False`` return the running server (call ``shutdown()``).

    With ``ssl_context`` the listener speaks DICOM TLS only.
    """
    ae = ae_build(ae_title=ae_title, max_associations=max_associations)
    return ae.start_server((host, port), block=block, evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay), *HANDLERS, *COMMITMENT_HANDLERS],
                           ssl_context=ssl_context)

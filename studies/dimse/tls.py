"""DICOM TLS on the associations we open: a node with a pinned certificate is called over TLS or not at all.

A node registered with a certificate (``DicomNode.tls_certificate_sha256``) may call in only over DICOM
TLS presenting it (``nodes.node_refusal``); the same pin identifies it when we call it, so it must present
that same certificate when it listens. C-MOVE sub-associations, storage commitment reports on a new
association and outbound sends (``studies.outbound.scu``) all call through ``node_client_tls``: TLS 1.2 or
later, our listener's certificate and key (``DICOM_TLS_CERTIFICATE``, ``DICOM_TLS_PRIVATE_KEY``) as the
client certificate, and the node's certificate checked against its pin right after the handshake, before
pynetdicom sends the A-ASSOCIATE-RQ (which names both AE titles). The pin replaces CA validation: a node's
certificate may be self-signed.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from dataclasses import dataclass
from typing import cast

from django.conf import settings

from studies.models import DicomNode

# Seconds the TLS handshake may take: pynetdicom connects without a timeout unless one is set.
HANDSHAKE_TIMEOUT = 30


class NodeTLSError(Exception):
    """An association to a node that requires DICOM TLS cannot be opened safely; nothing was sent.

    ``comment`` is the short form (64 characters at most) for a DIMSE Error Comment.
    """

    def __init__(self, message: str, *, comment: str) -> None:
        super().__init__(message)
        self.message = message
        self.comment = comment[:64]


class _PinnedSocket(ssl.SSLSocket):
    """Checks the peer's certificate against the node's pin as soon as the handshake is done."""

    def do_handshake(self, block: bool = False) -> None:
        context = cast(_PinnedContext, self.context)
        if self.gettimeout() is None:
            # pynetdicom clears the timeout once connected: this bounds only a peer that stalls the handshake.
            self.settimeout(HANDSHAKE_TIMEOUT)
        try:
            super().do_handshake(block)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            context.failure = NodeTLSError(
                f"{context.label} did not complete a DICOM TLS handshake ({reason}); it must listen for "
                "DICOM TLS on that port.",
                comment="Destination did not complete a DICOM TLS handshake",
            )
            raise
        der = self.getpeercert(binary_form=True)
        presented = hashlib.sha256(der).hexdigest() if der else ""
        if not hmac.compare_digest(presented, context.pin):
            context.failure = NodeTLSError(
                f"{context.label} presented a certificate that does not match its pin "
                f"(SHA-256 {presented or 'none'}).",
                comment="Destination's TLS certificate does not match its pin",
            )
            # An OSError, so pynetdicom treats it as a failed connection: it closes the socket, sends nothing.
            raise ssl.SSLCertVerificationError(context.failure.message)


class _PinnedContext(ssl.SSLContext):
    sslsocket_class = _PinnedSocket
    pin: str
    label: str
    failure: NodeTLSError | None


@dataclass(frozen=True)
class ClientTLS:
    """The ``tls_args`` of one association to a pinned node, and why it failed, if it did."""

    context: _PinnedContext
    server_hostname: str

    @property
    def tls_args(self) -> tuple[ssl.SSLContext, str]:
        return self.context, self.server_hostname

    @property
    def failure(self) -> NodeTLSError | None:
        """Set when the handshake failed or the certificate did not match: the association never started."""
        return self.context.failure


def node_label(node: DicomNode) -> str:
    return f"{node.ae_title} at {node.host}:{node.port}"


def node_client_tls(node: DicomNode) -> ClientTLS | None:
    """Return the TLS set-up for one association to this node; None when it has no pinned certificate.

    Use a new one per association: it records that association's failure.
    Raises NodeTLSError when our own certificate and key are not configured or cannot be loaded.
    """
    if not node.tls_certificate_sha256:
        return None
    missing = [name for name in ("DICOM_TLS_CERTIFICATE", "DICOM_TLS_PRIVATE_KEY") if not getattr(settings, name)]
    if missing:
        raise NodeTLSError(
            f"{node.ae_title} requires DICOM TLS but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            "not set.",
            comment="Destination requires DICOM TLS; no TLS certificate is set",
        )
    context = _PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The pin, checked in _PinnedSocket, is what identifies the node; its certificate need not chain to a CA.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        context.load_cert_chain(certfile=settings.DICOM_TLS_CERTIFICATE, keyfile=settings.DICOM_TLS_PRIVATE_KEY)
    except (OSError, ssl.SSLError) as exc:
        raise NodeTLSError(
            f"{node.ae_title} requires DICOM TLS but our certificate and key (DICOM_TLS_CERTIFICATE, "
            f"DICOM_TLS_PRIVATE_KEY) could not be loaded: {getattr(exc, 'strerror', None) or exc}.",
            comment="Destination requires DICOM TLS; our certificate is unusable",
        ) from exc
    context.pin = node.tls_certificate_sha256.lower()
    context.label = node_label(node)
    context.failure = None
    # The host name goes out as SNI only: the certificate is checked against the pin, not this name.
    return ClientTLS(context, node.host)

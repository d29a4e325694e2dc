"""Registered remote DICOM nodes: who may call a clinic, and where C-MOVE may send.

A node's host is a clinic's input, and every association we open to it (C-MOVE destinations, sends,
migrations, routing, storage commitment reports) starts inside the operator's network: it goes only to an
address ``studies.addresses`` allows, internal ones only inside ``DICOM_NODE_ALLOWED_NETWORKS``
(``node_connect_address``). Registration refuses a host that resolves only to refused addresses.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet

from portal.exceptions import PortalError
from studies import addresses
from studies.dimse.tls import node_label
from studies.models import DicomNode
from tenants.ae_titles import ae_title_clean
from tenants.audit import Actor, audit_record
from tenants.models import Clinic, User

ANY_ADDRESS_WARNING = (
    "This node accepts calls from any address: anyone on the internet who guesses its AE title and the "
    "clinic's can then search and retrieve the clinic's studies. Prefer its address or network."
)


def address_allows(*, allowed_address: str, peer_address: str) -> bool:
    """Say whether the peer's IP address falls inside an address or network (CIDR)."""
    if not allowed_address:
        return False
    try:
        return ipaddress.ip_address(peer_address) in ipaddress.ip_network(allowed_address, strict=False)
    except ValueError:
        return False


def _host_addresses(host: str) -> set[str]:
    """The IP addresses a node's host name (or literal address) stands for; empty if it does not resolve."""
    try:
        return {ipaddress.ip_address(host).compressed}
    except ValueError:
        pass
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return set()


class NodeAddressRefused(Exception):
    """No association may be opened to the node's host now: nothing was sent.

    Its name resolves only to internal addresses the operator has not allowed, or does not resolve at all.
    ``comment`` is the short form (64 characters at most) for a DIMSE Error Comment.
    """

    def __init__(self, message: str, *, comment: str) -> None:
        super().__init__(message)
        self.message = message
        self.comment = comment[:64]


def node_connect_address(node: DicomNode) -> str:
    """Return the IP address to open an association to this node at, checked now.

    The first address of the node's host that ``studies.addresses`` allows with DICOM_NODE_ALLOWED_NETWORKS.
    Callers connect to this literal address, not to the host name: a second lookup could answer otherwise
    (DNS rebinding). Raises NodeAddressRefused when there is none.
    """
    try:
        return addresses.connectable_address(node.host, node.port, settings.DICOM_NODE_ALLOWED_NETWORKS,
                                             ipv4_first=True)
    except addresses.AddressRefused as exc:
        raise NodeAddressRefused(
            f"{node_label(node)} points at an internal address ({exc.address}); ask the operator to allow "
            "that network.",
            comment="Destination is at an internal address that is not allowed",
        ) from None
    except (OSError, UnicodeError, ValueError) as exc:
        raise NodeAddressRefused(
            f"{node_label(node)} cannot be reached: its host name does not resolve.",
            comment="Destination's host name does not resolve",
        ) from exc


def _host_check(host: str, port: int) -> None:
    """Raise PortalError when the host resolves only to addresses a node may not have.

    A name that does not resolve now passes: it may later (a VPN not up yet), and every association is
    checked again when it is opened (``node_connect_address``), which is the guard that counts.
    """
    try:
        addresses.connectable_address(host, port, settings.DICOM_NODE_ALLOWED_NETWORKS, ipv4_first=True)
    except addresses.AddressRefused as exc:
        raise PortalError(
            f"The node's host points at an internal address ({exc.address}); ask the operator to allow that "
            "network."
        ) from None
    except (OSError, UnicodeError, ValueError):
        pass


def certificate_sha256(pem: str) -> str:
    """Return the SHA-256 fingerprint (hex) of a PEM certificate; raise PortalError if it is not one."""
    try:
        certificate = x509.load_pem_x509_certificate(pem.strip().encode())
    except ValueError as exc:
        raise PortalError("The client certificate must be one PEM certificate (-----BEGIN CERTIFICATE-----).") from exc
    return certificate.fingerprint(hashes.SHA256()).hex()


def node_refusal(*, node: DicomNode, peer_address: str, peer_certificate_sha256: str) -> str:
    """Why a call claiming to be this node is refused, or "" when it is accepted.

    A node with a client certificate must call over DICOM TLS with exactly that certificate (from any
    address, unless it also has an address restriction); any other node must call from its address.
    """
    if node.tls_certificate_sha256:
        if not peer_certificate_sha256:
            return "this AE title must call over DICOM TLS"
        if not hmac.compare_digest(peer_certificate_sha256, node.tls_certificate_sha256):
            return "client certificate does not match this AE title"
        if node.allowed_address and not node_accepts_address(node=node, peer_address=peer_address):
            return "calling address not allowed for this AE title"
        return ""
    if not node_accepts_address(node=node, peer_address=peer_address):
        return "calling address not allowed for this AE title"
    return ""


def node_accepts_address(*, node: DicomNode, peer_address: str) -> bool:
    """Say whether a call from this address may be this node: its network, else its host, else by choice any."""
    if node.allowed_address:
        return address_allows(allowed_address=node.allowed_address, peer_address=peer_address)
    if node.allow_any_address:
        return True
    try:
        peer = ipaddress.ip_address(peer_address)
    except ValueError:
        return False
    # An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d.
    peer = getattr(peer, "ipv4_mapped", None) or peer
    return peer.compressed in _host_addresses(node.host)


def dicom_node_list(*, clinic: Clinic) -> QuerySet[DicomNode]:
    return DicomNode.objects.for_clinic(clinic).order_by("ae_title")


def dicom_node_inbound_get(*, clinic: Clinic, ae_title: str) -> DicomNode | None:
    """Return the node that may open associations with this calling AE title, if any."""
    return DicomNode.objects.for_clinic(clinic).filter(ae_title=ae_title.strip(), allow_inbound=True).first()


def dicom_node_may_call(*, clinic: Clinic, node: DicomNode) -> bool:
    """Say whether this node is still registered and may still call in (one query).

    An association keeps the node it was accepted for; this tells a request on it whether the node
    was removed, or its inbound access switched off, in the meantime.
    """
    return dicom_node_inbound_current(clinic=clinic, node=node) is not None


def dicom_node_inbound_current(*, clinic: Clinic, node: DicomNode) -> DicomNode | None:
    """Return the node as registered now if it may still call in (``dicom_node_may_call``'s rule), else None.

    For work that outlives the association it was asked on (a storage commitment report): it goes to the
    node's address and certificate as they are now.
    """
    return DicomNode.objects.for_clinic(clinic).filter(pk=node.pk, allow_inbound=True).first()


def dicom_node_destination_get(*, clinic: Clinic, ae_title: str) -> DicomNode | None:
    """Return the registered C-MOVE destination with this AE title, if any."""
    return DicomNode.objects.for_clinic(clinic).filter(ae_title=ae_title.strip(), is_move_destination=True).first()


def dicom_node_create(
    *,
    clinic: Clinic,
    ae_title: str,
    host: str,
    port: int,
    description: str = "",
    allow_inbound: bool = True,
    is_move_destination: bool = True,
    allowed_address: str = "",
    calling_ae_title: str = "",
    allow_any_address: bool = False,
    tls_certificate_pem: str = "",
    actor: User | None = None,
    by: Actor | None = None,
) -> DicomNode:
    """Register a remote node for the clinic.

    A node that may call in is accepted from ``allowed_address`` (an address or network) or, without
    one, from ``host``'s address; ``allow_any_address`` (with ANY_ADDRESS_WARNING shown to whoever
    chose it) accepts it from anywhere, and is recorded as such in the audit trail. With a TLS client
    certificate (PEM) the node must call over DICOM TLS presenting it.
    Raises PortalError for an invalid AE title, port or address, a host at an internal address the operator
    has not allowed (DICOM_NODE_ALLOWED_NETWORKS), or an AE title already registered.
    """
    ae_title = ae_title_clean(ae_title)
    host = (host or "").strip()
    if not host or len(host) > 255:
        raise PortalError("Give the node's host name or IP address.")
    if not 1 <= int(port) <= 65535:
        raise PortalError("The port must be between 1 and 65535.")
    calling_ae_title = ae_title_clean(calling_ae_title) if (calling_ae_title or "").strip() else ""
    allowed_address = (allowed_address or "").strip()
    if allowed_address:
        try:
            ipaddress.ip_network(allowed_address, strict=False)
        except ValueError as exc:
            raise PortalError("The address restriction must be an IP address or a network such as 10.0.0.0/24.") from exc
    fingerprint = certificate_sha256(tls_certificate_pem) if (tls_certificate_pem or "").strip() else ""
    _host_check(host, int(port))
    try:
        with transaction.atomic():
            node = DicomNode.objects.create(
                clinic=clinic, ae_title=ae_title, host=host, port=int(port), description=description.strip()[:200],
                allow_inbound=allow_inbound, is_move_destination=is_move_destination, allowed_address=allowed_address,
                calling_ae_title=calling_ae_title,
                allow_any_address=allow_any_address and not allowed_address, tls_certificate_sha256=fingerprint,
            )
    except IntegrityError as exc:
        raise PortalError(f"The AE title '{ae_title}' is already registered for this clinic.") from exc
    audit_record(
        clinic=clinic, action="dicom_node.created", by=by, actor=actor, object_type="dicom_node",
        object_id=str(node.uuid),
        details={"ae_title": ae_title, "host": host, "port": node.port, "allow_inbound": allow_inbound,
                 "is_move_destination": is_move_destination, "allowed_address": allowed_address,
                 "allow_any_address": node.allow_any_address, "tls_certificate_sha256": fingerprint},
    )
    return node


def dicom_node_delete(
    *, clinic: Clinic, node: DicomNode, actor: User | None = None, by: Actor | None = None
) -> None:
    """Remove a registered node; it can no longer call in or receive C-MOVE."""
    if node.clinic_id != clinic.pk:
        raise PortalError("No such DICOM node.")
    details = {"ae_title": node.ae_title, "host": node.host, "port": node.port}
    node_uuid = str(node.uuid)
    node.delete()
    audit_record(clinic=clinic, action="dicom_node.deleted", by=by, actor=actor,
                 object_type="dicom_node", object_id=node_uuid, details=details)

"""Which addresses the portal may connect to on a clinic's word: the guard against requests into our own network.

Clinics name hosts the portal then connects to (a DICOMweb migration source, a DICOM node), and the portal
runs inside the operator's network. Loopback, link-local (the cloud metadata endpoint), private and other
internal addresses are therefore refused unless the operator allowed their network for that kind of peer
(``DICOMWEB_SOURCE_ALLOWED_NETWORKS``, ``DICOM_NODE_ALLOWED_NETWORKS``): otherwise one clinic could reach the
operator's private services, the cloud metadata endpoint or the portal's own stores and Redis.

A check is only as good as the address it judged being the one connected to: callers connect to the literal
address ``connectable_address`` returns, never to the name again (a second lookup may answer otherwise).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

# Not global, although Python 3.11's flags call them so: IETF protocol assignments (192.0.0.0/24), the 6to4
# relay, and 6to4 itself, which carries an IPv4 address (maybe an internal one) inside the IPv6 one.
_NOT_GLOBAL = tuple(ipaddress.ip_network(network) for network in ("192.0.0.0/24", "192.88.99.0/24", "2002::/16"))


class AddressRefused(Exception):
    """A host is, or resolves only to, addresses that may not be connected to; ``address`` is the first one.

    Not an OSError on purpose: network libraries would take it for a fault to retry or wrap.
    """

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.address = address


def address_allowed(address: str, allowed_networks: Iterable[str]) -> bool:
    """Say whether this IP address may be connected to.

    Public addresses may; loopback, link-local, unspecified, multicast, reserved, private, CGNAT and ULA ones
    only inside one of ``allowed_networks`` (CIDRs the operator allowed, e.g. a hospital's network over a VPN).
    """
    ip = ipaddress.ip_address(address)
    # ::ffff:127.0.0.1 is 127.0.0.1 on the wire: judge the IPv4 address it maps.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    networks = [ipaddress.ip_network(network, strict=False) for network in allowed_networks]
    if any(ip in network for network in networks):
        return True
    internal = (
        ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip.is_reserved
        or ip.is_private or not ip.is_global or any(ip in network for network in _NOT_GLOBAL)
        or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
    )
    return not internal


def connectable_address(
    host: str, port: int, allowed_networks: Iterable[str], *, family: int = socket.AF_UNSPEC, ipv4_first: bool = False
) -> str:
    """Resolve ``host`` and return the first of its addresses that may be connected to, as a literal IP.

    ``ipv4_first`` takes IPv4 addresses before IPv6 ones, whatever the resolver's order (pynetdicom's own
    choice for a name, so that a node reached by name is reached as before). Raises AddressRefused naming the
    first address refused when none may, and OSError (socket.gaierror) when the name does not resolve.
    """
    networks = list(allowed_networks)
    answers = [str(sockaddr[0]) for *_, sockaddr in socket.getaddrinfo(host.strip("[]"), port, family,
                                                                         socket.SOCK_STREAM)]
    if ipv4_first:
        answers.sort(key=lambda address: ":" in address)
    refused = ""
    for address in answers:
        if address_allowed(address, networks):
            return address
        refused = refused or address
    raise AddressRefused(refused or host)

"""A DICOMweb service as a migration source: QIDO-RS to list, WADO-RS to retrieve (dicomweb-client).

The source's credentials are sealed with the clinic's key in the job row; they are opened here, only to
build the HTTP session. Faults come out as two kinds: ``SourceUnreachable`` (cannot connect, time-out, a
5xx: worth waiting for, like a DICOM node that is down) and ``SourceRefused`` (the service answered that
the URL or the credentials are wrong: retrying changes nothing, so the job stops with the answer).

The URL is a clinic's input, and the portal runs inside the operator's network: every connection the session
makes (redirects included) is checked against the address it actually connects to, and internal addresses
are refused unless the operator allowed their network (``DICOMWEB_SOURCE_ALLOWED_NETWORKS``). Otherwise one
clinic could probe the operator's private services, the cloud metadata endpoint or the portal's own stores.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from dicomweb_client import DICOMwebClient
from django.conf import settings
from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NameResolutionError
from urllib3.util.connection import allowed_gai_family

from studies import addresses
from studies.archive import sealing
from studies.outbound.scu import ListedInstance, ListedStudy, NodeUnreachable
from tenants.models import Clinic

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT = (10, 120)
# dicomweb-client retries every failed call 5 times over 30 s by default, a source that is down included.
# A brief hiccup is retried here; a source that stays down is the job's to wait for (SourceUnreachable).
HTTP_ATTEMPTS = 3
HTTP_BACKOFF_MS = 250
PAGE_SIZE = 1000
# Ask for each instance as the source stores it: a transcoded copy would not be the source's data set.
AS_STORED = (("application/dicom", "*"),)
STUDY_INSTANCE_UID = "0020000D"
SERIES_INSTANCE_UID = "0020000E"
SOP_INSTANCE_UID = "00080018"
SOP_CLASS_UID = "00080016"
NUMBER_OF_STUDY_INSTANCES = "00201208"

T = TypeVar("T")

class SourceUnreachable(NodeUnreachable):
    """The DICOMweb source cannot be reached now; the migration waits for it and resumes."""


class SourceRefused(Exception):
    """The DICOMweb source answered that the request cannot succeed (wrong URL, credentials, permissions)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AddressRefused(Exception):
    """The DICOMweb source's host is, or leads to, an internal address the operator has not allowed.

    Not an OSError on purpose: urllib3 and requests would take it for a network fault to retry or wrap.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.message = (
            f"The DICOMweb URL points at an internal address ({address}); ask the operator to allow that network."
        )
        super().__init__(self.message)


def address_allowed(address: str) -> bool:
    """Say whether a DICOMweb source may be reached at this IP address: a public one, or one inside a network
    of ``settings.DICOMWEB_SOURCE_ALLOWED_NETWORKS`` (a hospital's PACS over a VPN); see ``studies.addresses``.
    """
    return addresses.address_allowed(address, settings.DICOMWEB_SOURCE_ALLOWED_NETWORKS)


def url_address_check(url: str) -> None:
    """Raise AddressRefused when the URL's host resolves only to addresses a source may not have.

    A name that does not resolve now passes: it may later (a VPN not up yet), and every connection is
    checked again when it is made, which is the guard that counts (DNS can answer otherwise by then).
    """
    parts = urlsplit(url)
    # The lookup a connection makes (_address_connectable), so the early answer and the guard agree.
    with contextlib.suppress(OSError, UnicodeError, ValueError):
        _address_connectable(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))


def _address_connectable(host: str, port: int) -> str:
    """The first address of ``host`` a source may have (a literal IP), or AddressRefused naming one it may not."""
    try:
        return addresses.connectable_address(
            host, port, settings.DICOMWEB_SOURCE_ALLOWED_NETWORKS, family=allowed_gai_family()
        )
    except addresses.AddressRefused as exc:
        raise AddressRefused(exc.address) from None


class _CheckedConnectionMixin:
    """Connect only to an allowed address, chosen from the very lookup the connection then uses.

    urllib3 resolves the name again in ``_new_conn``; a second lookup could answer otherwise (DNS rebinding),
    so the checked address is handed to it instead, for the time of the connect. The name stays for the Host
    header, TLS SNI and the certificate check, which read it only after the connect.
    """

    _dns_host: str
    port: int

    def _new_conn(self) -> socket.socket:
        name = self._dns_host
        try:
            address = _address_connectable(name, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(name, self, exc) from exc  # type: ignore[arg-type]
        self._dns_host = address
        try:
            return super()._new_conn()  # type: ignore[misc]
        finally:
            self._dns_host = name


class _CheckedHTTPConnection(_CheckedConnectionMixin, HTTPConnection):
    pass


class _CheckedHTTPSConnection(_CheckedConnectionMixin, HTTPSConnection):
    pass


class _CheckedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _CheckedAdapter(HTTPAdapter):
    """requests' adapter whose every connection (each redirect hop too) goes to an allowed address only."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _CheckedHTTPConnectionPool, "https": _CheckedHTTPSConnectionPool,
        }

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        # A proxy (HTTP_PROXY in the environment) would connect on our behalf, out of this check's sight:
        # the source is always reached directly.
        kwargs["proxies"] = {}
        return super().send(request, *args, **kwargs)


def url_clean(url: str) -> str:
    """Return the base URL without a trailing slash; raise ValueError unless it is http(s) with a host.

    Credentials in the URL are refused: they would be stored and shown in the clear.
    """
    url = (url or "").strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("The DICOMweb URL must start with http:// or https:// and name a host.")
    if parts.username or parts.password:
        raise ValueError("Give the DICOMweb credentials in their own fields, not in the URL.")
    if parts.query or parts.fragment:
        raise ValueError("The DICOMweb URL is the service's base URL, without a query.")
    return url


def _purpose(url: str) -> str:
    # Bound to the URL too: credentials sealed for one source do not open for another.
    return f"migration-dicomweb:{url}"


def credentials_seal(*, clinic: Clinic, url: str, credentials: dict[str, str]) -> bytes:
    if not credentials:
        return b""
    plaintext = json.dumps(credentials, sort_keys=True).encode()
    return sealing.payload_seal(clinic=clinic, plaintext=plaintext, purpose=_purpose(url))


def _session(*, clinic: Clinic, url: str, auth: str, sealed: bytes) -> requests.Session:
    session = requests.Session()
    session.mount("http://", _CheckedAdapter())
    session.mount("https://", _CheckedAdapter())
    if not auth or not sealed:
        return session
    credentials = json.loads(sealing.payload_open(clinic=clinic, sealed=bytes(sealed), purpose=_purpose(url)))
    if auth == "bearer":
        session.headers["Authorization"] = f"Bearer {credentials['token']}"
    elif auth == "basic":
        session.auth = (credentials["username"], credentials["password"])
    return session


class DicomwebSource:
    """One migration's DICOMweb source, with its session (credentials opened once per task)."""

    def __init__(self, *, clinic: Clinic, url: str, auth: str = "", sealed: bytes = b"") -> None:
        self.url = url
        self.client = DICOMwebClient(
            url, session=_session(clinic=clinic, url=url, auth=auth, sealed=sealed), timeout=REQUEST_TIMEOUT
        )
        self.client.set_http_retry_params(
            retry=True, max_attempts=HTTP_ATTEMPTS, wait_exponential_multiplier=HTTP_BACKOFF_MS
        )

    def _call(self, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code in (400, 401, 403, 404, 405, 406, 410):
                raise SourceRefused(self._refusal(what, code)) from exc
            raise SourceUnreachable(f"The DICOMweb source {self.url} answered {code} to {what}.") from exc
        except AddressRefused as exc:
            # The URL, its name's address now or a redirect leads inside the operator's network: stop the job.
            raise SourceRefused(
                f"The DICOMweb source {self.url} led to an internal address ({exc.address}) for {what}; "
                "ask the operator to allow that network."
            ) from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise SourceUnreachable(f"The DICOMweb source {self.url} cannot be reached ({what}).") from exc
        except ValueError as exc:  # not DICOM JSON or not multipart: it is not a DICOMweb service
            raise SourceRefused(f"{self.url} did not answer {what} as a DICOMweb service does.") from exc

    def _refusal(self, what: str, code: int) -> str:
        if code in (401, 403):
            return f"The DICOMweb source {self.url} refused the credentials ({code}) for {what}."
        if code == 404:
            return (
                f"The DICOMweb source {self.url} answered 404 (not found) to {what}: "
                "check the service's base URL (e.g. https://host/dicom-web)."
            )
        return f"The DICOMweb source {self.url} answered {code} to {what}."

    def studies_search(
        self, *, study_date_from: str, study_date_to: str, modality: str = "", patient_id: str = ""
    ) -> list[ListedStudy]:
        filters: dict[str, str] = {}
        if study_date_from or study_date_to:
            filters["StudyDate"] = f"{study_date_from}-{study_date_to}"
        if modality:
            filters["ModalitiesInStudy"] = modality
        if patient_id:
            filters["PatientID"] = patient_id
        found = self._pages(
            "the study search (QIDO-RS)",
            STUDY_INSTANCE_UID,
            lambda offset: self.client.search_for_studies(
                search_filters=filters, fields=["NumberOfStudyRelatedInstances"], limit=PAGE_SIZE, offset=offset
            ),
        )
        studies = []
        for uid, item in found.items():
            count = _value(item, NUMBER_OF_STUDY_INSTANCES)
            studies.append(ListedStudy(study_instance_uid=uid, instances=int(count) if count else None))
        return studies

    def _pages(self, what: str, key: str, search: Callable[[int], list[dict]]) -> dict[str, dict]:
        """Every result of a paged QIDO-RS search, by the UID in ``key``.

        Pages are asked until one brings nothing new: a server may cap a page below PAGE_SIZE, and some
        (Orthanc 1.10's plugin with a filter) ignore ``offset`` and answer the first page again.
        """
        found: dict[str, dict] = {}
        while True:
            page = self._call(what, lambda: search(len(found))) or []
            new = {uid: item for item in page if (uid := _value(item, key)) and uid not in found}
            if not new:
                return found
            found.update(new)

    def study_instances(self, *, study_instance_uid: str) -> list[ListedInstance]:
        found = self._pages(
            "the instance search (QIDO-RS)",
            SOP_INSTANCE_UID,
            lambda offset: self.client.search_for_instances(
                study_instance_uid=study_instance_uid, limit=PAGE_SIZE, offset=offset
            ),
        )
        return [
            ListedInstance(
                series_instance_uid=_value(item, SERIES_INSTANCE_UID),
                sop_instance_uid=uid,
                sop_class_uid=_value(item, SOP_CLASS_UID),
            )
            for uid, item in found.items()
        ]

    def study_iter(self, *, study_instance_uid: str) -> Iterator[Dataset]:
        """Every instance of the study, streamed one part at a time (WADO-RS)."""
        iterator = self._call(
            "the study retrieve (WADO-RS)", lambda: self.client.iter_study(study_instance_uid, media_types=AS_STORED)
        )
        while True:
            try:
                item = self._call("the study retrieve (WADO-RS)", lambda: next(iterator, None))
            except InvalidDicomError as exc:
                # The stream cannot go on past a part that is not DICOM: what is left stays missing, and
                # the study's next attempt asks for those instances one by one.
                logger.warning("DICOMweb source %s sent a part that is not DICOM: %s", self.url, exc)
                return
            if item is None:
                return
            yield item

    def instances_iter(self, *, study_instance_uid: str, uids: list[tuple[str, str]]) -> Iterator[tuple[str, Dataset]]:
        """The instances named by (series UID, SOP Instance UID), one request each; undecodable ones skipped.

        Each comes with the SOP Instance UID it was asked for: the source may answer with another instance.
        """
        for series_instance_uid, sop_instance_uid in uids:
            try:
                yield sop_instance_uid, self._call(
                    "an instance retrieve (WADO-RS)",
                    functools.partial(
                        self.client.retrieve_instance, study_instance_uid, series_instance_uid, sop_instance_uid,
                        media_types=AS_STORED,
                    ),
                )
            except InvalidDicomError as exc:
                logger.warning(
                    "DICOMweb source %s sent instance %s as something not DICOM: %s", self.url, sop_instance_uid, exc
                )


def _value(item: dict, tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else ""

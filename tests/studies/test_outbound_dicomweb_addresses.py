"""A DICOMweb migration source may not lead the portal into the operator's own network (SSRF).

Internal addresses are refused when the job is created (at once, 400) and, the guard that counts, at every
connection the source's session makes: a name that resolves elsewhere by then, a redirect, a mapped address.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from http import HTTPStatus
from urllib.parse import urlsplit

import pytest

from studies.models import Instance
from studies.outbound import dicomweb_source, services
from studies.outbound.models import JobStatus, MigrationJob
from tests.peers import running_orthanc
from tests.studies.test_outbound import _migrate, _old_archive

REFUSAL = "points at an internal address"


class _Server(http.server.ThreadingHTTPServer):
    """A local HTTP server that notes every request it is sent."""

    def __init__(self, host: str, location: str = "") -> None:
        super().__init__((host, 0), _Handler)
        self.location = location
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        if self.server.location:
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", self.server.location + self.path)
        else:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"[]")

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _serving(host: str, location: str = "") -> Iterator[_Server]:
    server = _Server(host, location)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def internal_service() -> Iterator[_Server]:
    """What a clinic must not reach: a service of the operator's listening on loopback."""
    with _serving("127.0.0.1") as server:
        yield server


def _port(server: _Server) -> int:
    return int(server.server_address[1])


@pytest.mark.parametrize(
    "host, address",
    [
        ("127.0.0.1", "127.0.0.1"),
        ("localhost", "127.0.0.1"),
        ("169.254.169.254", "169.254.169.254"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ("10.0.0.5", "10.0.0.5"),
        ("[fd00::5]", "fd00::5"),
    ],
)
def test_a_dicomweb_source_at_an_internal_address_is_refused_by_the_api_and_creates_nothing(
    client, clinic, admin, internal_service, host, address
):
    client.force_login(admin)

    response = client.post(
        f"/api/v1/clinics/{clinic.slug}/migrations/",
        {"dicomweb_url": f"http://{host}:{_port(internal_service)}/dicom-web"},
        content_type="application/json",
    )

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["message"] == (
        f"The DICOMweb URL points at an internal address ({address}); ask the operator to allow that network."
    )
    assert not MigrationJob.objects.exists()
    assert internal_service.requests == []


def test_a_dicomweb_source_at_an_internal_address_is_refused_by_the_migration_page(
    client, clinic, admin, internal_service
):
    client.force_login(admin)

    response = client.post(
        f"/c/{clinic.slug}/outbound/migrations/",
        {"node": "", "method": "C-GET", "dicomweb_url": f"{internal_service.url}/dicom-web"},
    )

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert b"The DICOMweb URL points at an internal address (127.0.0.1); ask the operator" in response.content
    assert not MigrationJob.objects.exists()
    assert internal_service.requests == []


def test_a_dicomweb_source_on_a_network_the_operator_allowed_is_accepted(
    client, clinic, admin, internal_service, settings
):
    settings.DICOMWEB_SOURCE_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    client.force_login(admin)

    response = client.post(
        f"/api/v1/clinics/{clinic.slug}/migrations/",
        {"dicomweb_url": f"http://localhost:{_port(internal_service)}/dicom-web"},
        content_type="application/json",
    )

    assert response.status_code == HTTPStatus.ACCEPTED
    assert MigrationJob.objects.get().dicomweb_url == f"http://localhost:{_port(internal_service)}/dicom-web"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("tasks_run_inline")
def test_a_dicomweb_source_reached_by_name_on_an_allowed_network_is_migrated(client, clinic, admin, settings,
                                                                             tmp_path):
    settings.DICOMWEB_SOURCE_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        _old_archive(orthanc, tmp_path)
        client.force_login(admin)

        report = _migrate(client, clinic, dicomweb_url=f"http://localhost:{urlsplit(orthanc.url).port}/dicom-web")

    assert (report["status"], report["instances_done"], report["missing"]) == ("done", 9, [])


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("tasks_run_inline")
def test_a_redirect_from_an_allowed_source_to_an_internal_address_stops_the_job_before_any_request_reaches_it(
    client, clinic, admin, internal_service, settings
):
    # Only the first hop's network is allowed: 127.0.0.2 answers every request with a redirect to 127.0.0.1.
    settings.DICOMWEB_SOURCE_ALLOWED_NETWORKS = ["127.0.0.2/32"]
    client.force_login(admin)

    with _serving("127.0.0.2", location=internal_service.url) as redirector:
        report = _migrate(client, clinic, dicomweb_url=f"{redirector.url}/dicom-web")

    assert report["status"] == "stopped"
    assert "internal address (127.0.0.1)" in report["error"] and "ask the operator" in report["error"]
    assert redirector.requests and internal_service.requests == []
    assert not Instance.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::ffff:127.0.0.1]"])
def test_a_source_whose_address_turned_internal_after_the_job_was_created_is_refused_when_connecting(
    clinic, internal_service, host
):
    # As if the name resolved to a public address when the job was created (DNS rebinding): no check then.
    job = MigrationJob.objects.create(clinic=clinic, dicomweb_url=f"http://{host}:{_port(internal_service)}/dicom-web",
                                      method=MigrationJob.Method.WADO)

    more = services.migration_run(job=job)

    job.refresh_from_db()
    assert not more and job.status == JobStatus.STOPPED
    assert "internal address" in job.error and "ask the operator to allow that network" in job.error
    assert internal_service.requests == []


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.8.9.10", "::1", "0.0.0.0", "::", "169.254.169.254", "fe80::1", "fe80::1%1",
        "10.0.0.5", "172.16.0.1", "192.168.1.1", "100.64.0.1", "fd00::5", "fec0::1", "224.0.0.1", "ff02::1",
        "240.0.0.1", "255.255.255.255", "192.0.0.8", "198.18.0.1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
        "::ffff:10.0.0.5", "::127.0.0.1", "64:ff9b::a00:5", "2002:a00:5::",
    ],
)
def test_internal_addresses_are_refused_by_default(settings, address):
    settings.DICOMWEB_SOURCE_ALLOWED_NETWORKS = []

    assert not dicomweb_source.address_allowed(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2001:4860:4860::8888", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(settings, address):
    settings.DICOMWEB_SOURCE_ALLOWED_NETWORKS = []

    assert dicomweb_source.address_allowed(address)


@pytest.mark.parametrize("address, allowed", [("10.8.1.2", True), ("::ffff:10.8.1.2", True), ("10.9.0.1", False),
                                              ("127.0.0.1", False), ("fd00:8::1", True), ("fd00:9::1", False)])
def test_only_the_networks_the_operator_allowed_are_opened(settings, address, allowed):
    settings.DICOMWEB_SOURCE_ALLOWED_NETWORKS = ["10.8.0.0/16", "fd00:8::/32"]

    assert dicomweb_source.address_allowed(address) is allowed

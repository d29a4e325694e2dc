"""DIMSE listener security: loopback by default, nodes tied to an address, throttled guessing, DICOM TLS."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from http import HTTPStatus
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from portal.exceptions import PortalError
from studies.dimse import nodes
from studies.models import DicomNode, Instance
from tenants.models import AuditEvent
from tests.databases import database_url
from tests.studies.dimse_support import HOST, MODALITY_AE, dcmtk, free_port, running_scp
from tests.studies.dimse_tls_support import CertificateAuthority, running_tls_listener

pytestmark = pytest.mark.django_db(transaction=True)


def _outside_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        address = sock.getsockname()[0]
    return None if address.startswith("127.") else address


def _reachable(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((address, port)) == 0


def _start_dicom_scp(
    tmp_path: Path, port: int, bind: str | None = None, env_extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Run manage.py dicom_scp without --host; wait until it listens on ``bind`` (default: loopback)."""
    env = {**os.environ, "DATABASE_URL": database_url(),
           "CELERY_BROKER_URL": "memory://", "PORTAL_VAR_DIR": str(tmp_path)}
    env.pop("DICOM_BIND_ADDRESS", None)
    if bind:
        env["DICOM_BIND_ADDRESS"] = bind
    env.update(env_extra or {})
    server = subprocess.Popen([sys.executable, str(settings.BASE_DIR / "manage.py"), "dicom_scp", "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _reachable(bind or HOST, port):
        time.sleep(0.1)
    return server


def test_dicom_scp_listens_on_loopback_only_by_default(tmp_path):
    outside = _outside_address()
    if outside is None:
        pytest.skip("this machine has no address besides loopback")
    port = free_port()

    server = _start_dicom_scp(tmp_path, port)
    try:
        on_loopback = _reachable(HOST, port)
        from_outside = _reachable(outside, port)
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0].decode()

    assert (on_loopback, from_outside) == (True, False)
    assert f"DICOM listener on 127.0.0.1:{port}" in output


def test_dicom_bind_address_setting_opens_the_listener_to_the_network(tmp_path):
    outside = _outside_address()
    if outside is None:
        pytest.skip("this machine has no address besides loopback")
    port = free_port()

    server = _start_dicom_scp(tmp_path, port, bind=outside)
    try:
        from_outside = _reachable(outside, port)
    finally:
        server.terminate()
        server.communicate(timeout=30)

    assert from_outside


# --- nodes are tied to an address ---------------------------------------------------------------------


@pytest.fixture
def scp_port():
    with running_scp() as port:
        yield port


def echo(port: int, *, calling: str = MODALITY_AE, called: str):
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, port, ae_title=called)
    status = assoc.send_c_echo() if assoc.is_established else None
    if assoc.is_established:
        assoc.release()
    return assoc, status


def test_a_node_without_a_network_is_only_accepted_from_its_own_host(clinic, scp_port):
    nodes.dicom_node_create(clinic=clinic, ae_title=MODALITY_AE, host="10.9.9.9", port=104)

    assoc, _ = echo(scp_port, called=clinic.ae_title)

    assert assoc.is_rejected
    event = AuditEvent.objects.for_clinic(clinic).get(action="dimse.association")
    assert event.details["reason"] == "calling address not allowed for this AE title"


def test_a_node_registered_by_host_name_is_accepted_from_that_hosts_address(clinic, scp_port):
    nodes.dicom_node_create(clinic=clinic, ae_title=MODALITY_AE, host="localhost", port=104)

    _, status = echo(scp_port, called=clinic.ae_title)

    assert status is not None and status.Status == 0x0000


def test_any_address_only_when_the_owner_accepts_the_risk(clinic, scp_port):
    nodes.dicom_node_create(clinic=clinic, ae_title=MODALITY_AE, host="10.9.9.9", port=104, allow_any_address=True)

    _, status = echo(scp_port, called=clinic.ae_title)

    assert status is not None and status.Status == 0x0000
    created = AuditEvent.objects.for_clinic(clinic).get(action="dicom_node.created")
    assert created.details["allow_any_address"] is True


def test_the_page_warns_and_shows_a_node_open_to_any_address(client, owner, clinic):
    client.force_login(owner)

    response = client.post(f"/c/{clinic.slug}/dicom-nodes/", {
        "ae_title": "REMOTE_CT", "host": "ct.example.org", "port": 104, "allow_inbound": "on",
        "allow_any_address": "on"}, follow=True)

    text = response.content.decode()
    assert DicomNode.objects.for_clinic(clinic).get().allow_any_address
    assert "from any address" in text and "guess" in text


def test_the_command_warns_about_any_address(clinic, capsys):
    call_command("add_dicom_node", "--clinic", clinic.slug, "--ae", "REMOTE", "--host", "ct.example.org",
                 "--port", "104", "--any-address")

    captured = capsys.readouterr()
    assert DicomNode.objects.for_clinic(clinic).get().allow_any_address
    assert "WARNING" in captured.err and "any address" in captured.err


def test_outsider_cannot_add_a_node_to_another_clinic(client, outsider, clinic):
    client.force_login(outsider)

    response = client.post(f"/c/{clinic.slug}/dicom-nodes/", {
        "ae_title": "SNEAKY", "host": "10.0.0.1", "port": 104, "allow_inbound": "on", "allow_any_address": "on"})

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert not DicomNode.objects.exists()


# --- guessing AE titles is throttled ------------------------------------------------------------------


@pytest.fixture
def shared_cache(settings):
    """The cache every process shares in production (Redis), so the throttle holds across listeners."""
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        pytest.skip("TEST_REDIS_URL is not set")
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url,
                                   "KEY_PREFIX": "dimse-throttle-test"}}
    from django.core.cache import cache

    cache.clear()
    yield cache
    cache.clear()


def test_repeated_rejected_associations_from_an_address_are_throttled_and_audited(
    clinic, scp_port, settings, shared_cache
):
    settings.DICOM_REJECT_LIMIT = 3
    nodes.dicom_node_create(clinic=clinic, ae_title=MODALITY_AE, host=HOST, port=104)

    guesses = [echo(scp_port, calling=f"GUESS{n}", called=clinic.ae_title)[0] for n in range(3)]
    right_title, _ = echo(scp_port, called=clinic.ae_title)
    echo(scp_port, called=clinic.ae_title)

    assert all(g.is_rejected for g in guesses)
    assert right_title.is_rejected
    assert right_title.acceptor.primitive.result == 0x02  # rejected-transient: try again later
    throttled = AuditEvent.objects.filter(action="dimse.association_throttled")
    assert throttled.count() == 1 and throttled.get().ip_address == HOST
    assert throttled.get().result == "denied"
    shared_cache.clear()  # the window passed
    _, status = echo(scp_port, called=clinic.ae_title)
    assert status is not None and status.Status == 0x0000


def test_accepted_associations_do_not_count_toward_the_throttle(clinic, scp_port, settings, shared_cache):
    settings.DICOM_REJECT_LIMIT = 2
    nodes.dicom_node_create(clinic=clinic, ae_title=MODALITY_AE, host=HOST, port=104)

    statuses = [echo(scp_port, called=clinic.ae_title)[1] for _ in range(4)]

    assert all(s is not None and s.Status == 0x0000 for s in statuses)


# --- DICOM TLS ----------------------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path):
    ca = CertificateAuthority(tmp_path)
    return ca, ca.issue("pacs-listener", server=True)


@pytest.fixture
def tls_port(pki):
    ca, listener = pki
    with running_tls_listener(certificate=listener, ca_file=ca.path) as port:
        yield port


def tls_echo(port: int, *, ca, client=None, called: str, calling: str = MODALITY_AE):
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca.path))
    if client is not None:
        context.load_cert_chain(str(client.certificate), str(client.key))
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, port, ae_title=called, tls_args=(context, "localhost"))
    status = assoc.send_c_echo() if assoc.is_established else None
    if assoc.is_established:
        assoc.release()
    return assoc, status


def test_a_node_with_its_client_certificate_echoes_over_tls_from_any_address(clinic, pki, tls_port):
    ca, _ = pki
    modality = ca.issue("modality1")
    nodes.dicom_node_create(clinic=clinic, ae_title=MODALITY_AE, host="10.9.9.9", port=104,
                            tls_certificate_pem=modality.pem)

    _, status = tls_echo(tls_port, ca=ca, client=modality, called=clinic.ae_title)

    assert status is not None and status.Status == 0x0000
    event = AuditEvent.objects.for_clinic(clinic).get(action="dimse.association")
    assert (event.result, event.details.get("tls")) == ("success", True)


def test_another_certificate_of_the_same_ca_cannot_claim_the_node(clinic, pki, tls_port):
    ca, _ = pki
    modality, intruder = ca.issue("modality1"), ca.issue("intruder")
    nodes.dicom_node_create(clinic=clinic, ae_title=MODALITY_AE, host=HOST, port=104,
                            tls_certificate_pem=modality.pem)

    assoc, _ = tls_echo(tls_port, ca=ca, client=intruder, called=clinic.ae_title)

    assert assoc.is_rejected
    event = AuditEvent.objects.for_clinic(clinic).get(action="dimse.association")
    assert event.details["reason"] == "client certificate does not match this AE title"


def test_a_node_with_a_certificate_is_refused_over_plain_tcp(clinic, pki, scp_port):
    ca, _ = pki
    nodes.dicom_node_create(clinic=clinic, ae_title=MODALITY_AE, host=HOST, port=104,
                            tls_certificate_pem=ca.issue("modality1").pem)

    assoc, _ = echo(scp_port, called=clinic.ae_title)

    assert assoc.is_rejected
    assert AuditEvent.objects.for_clinic(clinic).get(action="dimse.association").details["reason"] == (
        "this AE title must call over DICOM TLS")


def test_a_client_without_a_certificate_gets_no_association(clinic, pki, tls_port):
    ca, _ = pki
    nodes.dicom_node_create(clinic=clinic, ae_title=MODALITY_AE, host=HOST, port=104)

    assoc, status = tls_echo(tls_port, ca=ca, client=None, called=clinic.ae_title)

    assert not assoc.is_established and status is None
    assert not AuditEvent.objects.filter(action="dimse.association", result="success").exists()


def test_a_certificate_from_another_ca_gets_no_association(clinic, pki, tls_port, tmp_path):
    ca, _ = pki
    (tmp_path / "other").mkdir()
    stranger = CertificateAuthority(tmp_path / "other", name="Other CA").issue("modality1")
    nodes.dicom_node_create(clinic=clinic, ae_title=MODALITY_AE, host=HOST, port=104)

    assoc, _ = tls_echo(tls_port, ca=ca, client=stranger, called=clinic.ae_title)

    assert not assoc.is_established


def test_an_invalid_certificate_is_refused_when_registering(clinic):
    with pytest.raises(PortalError, match="PEM certificate"):
        nodes.dicom_node_create(clinic=clinic, ae_title=MODALITY_AE, host=HOST, port=104,
                                tls_certificate_pem="-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----")

    assert not DicomNode.objects.exists()


def test_dcmtk_echoscu_and_storescu_over_tls_through_manage_py_dicom_scp(clinic, pki, tmp_path):
    ca, listener = pki
    modality = ca.issue("modality1")
    call_command("add_dicom_node", "--clinic", clinic.slug, "--ae", MODALITY_AE, "--host", "10.9.9.9",
                 "--port", "104", "--tls-certificate", str(modality.certificate))
    port, tls = free_port(), free_port()
    server = _start_dicom_scp(tmp_path, port, env_extra={
        "DICOM_TLS_PORT": str(tls), "DICOM_TLS_CERTIFICATE": str(listener.certificate),
        "DICOM_TLS_PRIVATE_KEY": str(listener.key), "DICOM_TLS_CA_FILE": str(ca.path)})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _reachable(HOST, tls):
            time.sleep(0.1)
        tls_args = ["+tls", modality.key, modality.certificate, "+cf", ca.path]
        echoed = dcmtk("echoscu", *tls_args, "-aet", MODALITY_AE, "-aec", clinic.ae_title, HOST, tls)
        stored = dcmtk("storescu", *tls_args, "-aet", MODALITY_AE, "-aec", clinic.ae_title, HOST, tls,
                       get_testdata_file("CT_small.dcm"))
        plain = dcmtk("echoscu", "-aet", MODALITY_AE, "-aec", clinic.ae_title, HOST, port)
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0].decode()

    assert echoed.returncode == 0, echoed.stderr + echoed.stdout
    assert stored.returncode == 0, stored.stderr + stored.stdout
    assert Instance.objects.for_clinic(clinic).get().sop_instance_uid == dcmread(
        get_testdata_file("CT_small.dcm")).SOPInstanceUID
    assert plain.returncode != 0
    assert f"DICOM TLS listener on 127.0.0.1:{tls}" in output
    results = list(AuditEvent.objects.for_clinic(clinic).filter(action="dimse.association")
                   .order_by("sequence").values_list("result", "details__reason"))
    assert results == [("success", None), ("success", None), ("rejected", "this AE title must call over DICOM TLS")]


def test_a_silent_connection_to_the_tls_port_does_not_hold_up_others(clinic, pki, tls_port):
    ca, _ = pki
    modality = ca.issue("modality1")
    nodes.dicom_node_create(clinic=clinic, ae_title=MODALITY_AE, host=HOST, port=104,
                            tls_certificate_pem=modality.pem)

    with socket.create_connection((HOST, tls_port)):  # connects, never starts the handshake
        _, status = tls_echo(tls_port, ca=ca, client=modality, called=clinic.ae_title)

    assert status is not None and status.Status == 0x0000


# --- REST: dicom-nodes/ -------------------------------------------------------------------------------


def nodes_api(clinic) -> str:
    return f"/api/v1/clinics/{clinic.slug}/dicom-nodes/"


def test_api_registers_a_node_tied_to_its_host_by_default(client, admin, clinic):
    client.force_login(admin)

    response = client.post(nodes_api(clinic), {"ae_title": "CT2", "host": "10.0.0.7", "port": 104},
                           content_type="application/json")

    assert response.status_code == HTTPStatus.CREATED
    body = response.json()
    assert (body["allow_any_address"], body["warning"]) == (False, "")
    assert client.get(nodes_api(clinic)).json()["results"][0]["ae_title"] == "CT2"


def test_api_any_address_answers_with_the_warning(client, owner, clinic):
    client.force_login(owner)

    response = client.post(nodes_api(clinic), {"ae_title": "CT2", "host": "ct.example.org", "port": 104,
                                                "allow_any_address": True}, content_type="application/json")

    assert response.status_code == HTTPStatus.CREATED
    assert "guesses" in response.json()["warning"]
    assert DicomNode.objects.for_clinic(clinic).get().allow_any_address


def test_api_refuses_a_bad_certificate_with_a_message(client, owner, clinic):
    client.force_login(owner)

    response = client.post(nodes_api(clinic), {"ae_title": "CT2", "host": "10.0.0.7", "port": 104,
                                                "tls_certificate_pem": "not a certificate"},
                           content_type="application/json")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "PEM certificate" in response.json()["message"]
    assert not DicomNode.objects.exists()


def test_api_clinician_gets_403_and_outsider_404(client, clinician, outsider, clinic):
    node = nodes.dicom_node_create(clinic=clinic, ae_title="CT2", host="10.0.0.7", port=104)
    client.force_login(clinician)
    forbidden = client.post(nodes_api(clinic), {"ae_title": "X", "host": "h", "port": 104},
                            content_type="application/json")
    client.force_login(outsider)
    hidden = client.get(nodes_api(clinic))
    removed = client.delete(f"{nodes_api(clinic)}{node.uuid}/")

    assert (forbidden.status_code, hidden.status_code, removed.status_code) == (
        HTTPStatus.FORBIDDEN, HTTPStatus.NOT_FOUND, HTTPStatus.NOT_FOUND)
    assert DicomNode.objects.count() == 1


def test_api_deletes_a_node(client, admin, clinic):
    node = nodes.dicom_node_create(clinic=clinic, ae_title="CT2", host="10.0.0.7", port=104)
    client.force_login(admin)

    response = client.delete(f"{nodes_api(clinic)}{node.uuid}/")

    assert response.status_code == HTTPStatus.NO_CONTENT
    assert not DicomNode.objects.exists()

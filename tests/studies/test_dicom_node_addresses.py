"""A DICOM node may not lead the portal into the operator's own network (SSRF).

Internal addresses are refused when a node is registered (page, REST, command) and, the guard that counts,
at every association we open to one: a name that resolved to a public address at registration and to an
internal one now is not connected to, and the association goes to the very address that was checked.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from http import HTTPStatus
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

from portal.exceptions import PortalError
from studies import addresses
from studies.dimse import nodes
from studies.dimse.scp import STORAGE_TRANSFER_SYNTAXES
from studies.models import DicomNode, Instance
from studies.outbound import scu, services
from studies.outbound.models import SendJob
from tenants.models import AuditEvent
from tests.studies.commitment_support import Modality
from tests.studies.dimse_support import HOST, MODALITY_AE, free_port, move, running_scp

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("tasks_run_inline")]
# The tests that open associations: the listener and the peers answer from their own threads.
over_the_network = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent.parent
NODE_AE = "OLDPACS"
NAME = "pacs.hospital.example"
PUBLIC = "93.184.216.34"


def _refusal(address: str) -> str:
    return f"The node's host points at an internal address ({address}); ask the operator to allow that network."


class _Dns:
    """Answers for one host name, in turn (the last one stays): the resolver as DNS rebinding makes it.

    Patched into the socket module itself, so pynetdicom's own lookups would see these answers too: a
    connection made by name instead of by the checked address would go where the later answers lead.
    """

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.real = socket.getaddrinfo

    def getaddrinfo(self, host, port, *args, **kwargs):
        if host != NAME:
            return self.real(host, port, *args, **kwargs)
        address = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port or 0))]


@pytest.fixture
def dns(monkeypatch):
    def answering(*answers: str) -> _Dns:
        fake = _Dns(*answers)
        monkeypatch.setattr(addresses.socket, "getaddrinfo", fake.getaddrinfo)
        return fake

    return answering


class _Peer:
    """A storage SCP standing for what must (or must not) be reached: notes every connection made to it."""

    def __init__(self, host: str = HOST, port: int | None = None) -> None:
        self.port = port or free_port()
        self.connections: list[str] = []
        self.received: list[str] = []
        self.lock = threading.Lock()
        ae = AE(ae_title=NODE_AE)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, STORAGE_TRANSFER_SYNTAXES)
        self.server = ae.start_server((host, self.port), block=False, evt_handlers=[
            (evt.EVT_CONN_OPEN, self._opened), (evt.EVT_C_STORE, self._store)])

    def _opened(self, event: evt.Event) -> None:
        with self.lock:
            self.connections.append(event.address[0])

    def _store(self, event: evt.Event) -> int:
        with self.lock:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def peer():
    listening = _Peer()
    yield listening
    listening.close()


def _register(clinic, port: int = 104, host: str = NAME, **extra: object) -> DicomNode:
    return nodes.dicom_node_create(clinic=clinic, ae_title=NODE_AE, host=host, port=port, allow_inbound=False,
                                   **extra)


def _send_job(clinic, node: DicomNode) -> SendJob:
    study = Instance.objects.for_clinic(clinic).first().series.study
    return SendJob.objects.create(clinic=clinic, node=node, study=study,
                                  instances_total=Instance.objects.for_clinic(clinic).count())


def _move(port: int, clinic, study):
    return move(port, clinic.ae_title, NODE_AE, StudyRootQueryRetrieveInformationModelMove,
                QueryRetrieveLevel="STUDY", StudyInstanceUID=study.study_uid)[-1]


# --- registration -----------------------------------------------------------------------------------------


INTERNAL_HOSTS = [
    ("127.0.0.1", "127.0.0.1"),
    ("localhost", "127.0.0.1"),
    ("169.254.169.254", "169.254.169.254"),
    ("10.0.0.5", "10.0.0.5"),
    ("172.31.5.6", "172.31.5.6"),
    ("::ffff:127.0.0.1", "::ffff:127.0.0.1"),
    ("fd00::5", "fd00::5"),
]


@pytest.mark.parametrize("host, address", INTERNAL_HOSTS)
def test_a_node_at_an_internal_address_is_refused_and_nothing_is_registered(clinic, settings, host, address):
    settings.DICOM_NODE_ALLOWED_NETWORKS = []

    with pytest.raises(PortalError) as refused:
        _register(clinic, host=host)

    assert refused.value.message == _refusal(address)
    assert not DicomNode.objects.exists()
    assert not AuditEvent.objects.filter(action="dicom_node.created").exists()


def test_the_api_refuses_a_node_at_the_cloud_metadata_address(client, clinic, admin, settings):
    settings.DICOM_NODE_ALLOWED_NETWORKS = []
    client.force_login(admin)

    response = client.post(f"/api/v1/clinics/{clinic.slug}/dicom-nodes/",
                           {"ae_title": NODE_AE, "host": "169.254.169.254", "port": 80},
                           content_type="application/json")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["message"] == _refusal("169.254.169.254")
    assert not DicomNode.objects.exists()


def test_the_page_refuses_a_node_at_our_own_redis(client, clinic, admin, settings):
    settings.DICOM_NODE_ALLOWED_NETWORKS = []
    client.force_login(admin)

    response = client.post(f"/c/{clinic.slug}/dicom-nodes/",
                           {"ae_title": NODE_AE, "host": "127.0.0.1", "port": "6379", "is_move_destination": "on"})

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "host points at an internal address (127.0.0.1); ask the operator to allow that network." in (
        response.content.decode())
    assert not DicomNode.objects.exists()


def test_the_command_refuses_a_node_on_a_private_network(clinic, settings):
    settings.DICOM_NODE_ALLOWED_NETWORKS = []

    with pytest.raises(CommandError, match=r"internal address \(10\.1\.2\.3\); ask the operator"):
        call_command("add_dicom_node", "--clinic", clinic.slug, "--ae", NODE_AE, "--host", "10.1.2.3", "--port", "104")

    assert not DicomNode.objects.exists()


def test_a_node_on_a_network_the_operator_allowed_is_registered(clinic, settings):
    settings.DICOM_NODE_ALLOWED_NETWORKS = ["10.8.0.0/16"]

    node = _register(clinic, host="10.8.1.2")
    with pytest.raises(PortalError, match=r"internal address \(10\.9\.0\.1\)"):
        nodes.dicom_node_create(clinic=clinic, ae_title="OTHER", host="10.9.0.1", port=104)

    assert list(DicomNode.objects.values_list("pk", "host")) == [(node.pk, "10.8.1.2")]


def test_loopback_nodes_are_registered_once_loopback_is_allowed(clinic, settings):
    settings.DICOM_NODE_ALLOWED_NETWORKS = ["127.0.0.0/8"]

    call_command("add_dicom_node", "--clinic", clinic.slug, "--ae", NODE_AE, "--host", "localhost", "--port", "104")

    assert DicomNode.objects.get().host == "localhost"


@over_the_network
def test_a_name_that_does_not_resolve_yet_is_registered_and_a_send_to_it_says_why_nothing_went(
    clinic, settings, stored_ct_study
):
    # A VPN not up yet: the name may resolve later; every association checks it again then.
    settings.DICOM_NODE_ALLOWED_NETWORKS = []
    node = _register(clinic, host="pacs.vpn.invalid")
    job = _send_job(clinic, node)

    with pytest.raises(scu.NodeUnreachable):
        services.send_run(job=job)

    job.refresh_from_db()
    assert job.error == f"{NODE_AE} at pacs.vpn.invalid:104 cannot be reached: its host name does not resolve."
    assert job.instances_done == 0


def test_a_public_name_is_registered(clinic, settings, dns):
    settings.DICOM_NODE_ALLOWED_NETWORKS = []
    dns(PUBLIC)

    assert _register(clinic).host == NAME


# --- at connection time -----------------------------------------------------------------------------------


@over_the_network
def test_a_send_to_a_node_whose_name_now_resolves_internally_connects_nowhere_and_records_why(
    clinic, settings, dns, peer, stored_ct_study
):
    # Public when the node was registered; the name now answers the portal's own loopback, where a
    # service (the peer) listens. No network is allowed by then.
    settings.DICOM_NODE_ALLOWED_NETWORKS = []
    dns(PUBLIC, HOST)
    job = _send_job(clinic, _register(clinic, port=peer.port))

    with pytest.raises(scu.NodeUnreachable):
        services.send_run(job=job)

    job.refresh_from_db()
    assert job.error == (f"{NODE_AE} at {NAME}:{peer.port} points at an internal address (127.0.0.1); "
                         "ask the operator to allow that network.")
    assert job.instances_done == 0
    assert peer.connections == peer.received == []


@over_the_network
def test_a_send_goes_to_the_checked_address_not_to_what_the_name_answers_next(clinic, settings, dns, stored_ct_study):
    # Only 127.0.0.1 is allowed. The name answers it for registration and the check, then 127.0.0.2: a
    # connection by name would reach the service listening there.
    settings.DICOM_NODE_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    node_peer = _Peer(HOST)
    inward = _Peer("127.0.0.2", port=node_peer.port)
    dns(HOST, HOST, "127.0.0.2")
    try:
        job = _send_job(clinic, _register(clinic, port=node_peer.port))
        services.send_run(job=job)
    finally:
        node_peer.close()
        inward.close()

    job.refresh_from_db()
    assert job.instances_done == len(stored_ct_study.files)
    assert sorted(node_peer.received) == sorted(stored_ct_study.sop_uids)
    assert inward.connections == []


@over_the_network
def test_a_move_to_a_destination_whose_name_now_resolves_internally_is_refused_and_audited(
    clinic, settings, dns, peer, scp_port, stored_ct_study
):
    dns(PUBLIC, HOST)
    _register(clinic, port=peer.port)
    settings.DICOM_NODE_ALLOWED_NETWORKS = []

    final = _move(scp_port, clinic, stored_ct_study)

    assert final.Status == 0xA801
    assert final.ErrorComment == "Destination is at an internal address that is not allowed"
    assert peer.connections == peer.received == []
    refused = AuditEvent.objects.for_clinic(clinic).get(action="dimse.retrieve", result="failure")
    assert refused.details == {
        "operation": "C-MOVE", "destination": NODE_AE,
        "reason": f"{NODE_AE} at {NAME}:{peer.port} points at an internal address (127.0.0.1); "
                  "ask the operator to allow that network.",
    }


@over_the_network
def test_a_move_goes_to_the_checked_address_not_to_what_the_name_answers_next(
    clinic, settings, dns, scp_port, stored_ct_study
):
    settings.DICOM_NODE_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    node_peer = _Peer(HOST)
    inward = _Peer("127.0.0.2", port=node_peer.port)
    dns(HOST, HOST, "127.0.0.2")
    try:
        _register(clinic, port=node_peer.port)
        final = _move(scp_port, clinic, stored_ct_study)
    finally:
        node_peer.close()
        inward.close()

    assert (final.Status, final.NumberOfCompletedSuboperations) == (0x0000, len(stored_ct_study.files))
    assert sorted(node_peer.received) == sorted(stored_ct_study.sop_uids)
    assert inward.connections == []


@over_the_network
def test_a_storage_commitment_report_is_not_sent_once_the_nodes_network_is_no_longer_allowed(
    clinic, settings, stored_ct_study
):
    settings.STORAGE_COMMITMENT_WAIT_SECONDS = 1
    modality = Modality()
    nodes.dicom_node_create(clinic=clinic, ae_title=MODALITY_AE, host=HOST, port=modality.port)
    references = list(Instance.objects.for_clinic(clinic).values_list("sop_class_uid", "sop_instance_uid"))
    try:
        with running_scp() as scp:
            # The operator closed loopback after the node was registered; it may still call in.
            settings.DICOM_NODE_ALLOWED_NETWORKS = []
            status = modality.request(scp, clinic.ae_title, references, keep_open=False, timeout=3)
            audited = AuditEvent.objects.for_clinic(clinic).filter(action="dimse.commitment")
            deadline = time.monotonic() + 20
            while not audited.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        modality.close()

    assert status == 0x0000
    assert modality.reports == []
    assert audited.get().details["report"] == (
        f"not sent: {MODALITY_AE} at {HOST}:{modality.port} points at an internal address (127.0.0.1); "
        "ask the operator to allow that network."
    )


# --- the setting ------------------------------------------------------------------------------------------


def test_a_setting_that_is_not_a_list_of_networks_stops_start_up():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings",
           "DICOM_NODE_ALLOWED_NETWORKS": "10.8.0.0/16,vpn"}

    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)

    assert result.returncode != 0
    assert "ImproperlyConfigured: DICOM_NODE_ALLOWED_NETWORKS: " in result.stderr
    assert "(give CIDRs, e.g. 10.8.0.0/16)." in result.stderr

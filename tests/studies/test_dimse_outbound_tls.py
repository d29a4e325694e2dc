"""Associations we open to a node with a pinned certificate: DICOM TLS with our certificate, and the pin checked
before any PDU (C-MOVE sub-associations, storage commitment reports, outbound sends)."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydicom import Dataset, dcmread
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, StudyRootQueryRetrieveInformationModelMove

from studies.archive import stores
from studies.dimse.commitment import COMMITMENT_INSTANCE
from studies.dimse.scp import STORAGE_TRANSFER_SYNTAXES, scp_start
from studies.models import Instance
from studies.outbound import scu, services
from studies.outbound.models import JobStatus, SendJob
from tenants.models import AuditEvent
from tests.studies.commitment_support import commitment_action
from tests.studies.dimse_support import (
    HOST,
    dataset_bytes,
    free_port,
    move,
    register_node,
)
from tests.studies.dimse_tls_support import CertificateAuthority, Issued, running_tls_listener

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("tasks_run_inline")]
PINNED_AE = "PINNED1"


def _issue_for_both_ends(ca: CertificateAuthority, common_name: str) -> Issued:
    """A certificate good as a TLS server and a TLS client: the portal's listener certificate is also the one it
    presents when it calls a pinned node."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert_path, key_path = ca.folder / f"{common_name}.crt", ca.folder / f"{common_name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return Issued(cert_path, key_path)


def _sha256(issued: Issued) -> str:
    return x509.load_pem_x509_certificate(issued.certificate.read_bytes()).fingerprint(hashes.SHA256()).hex()


class Pki:
    def __init__(self, folder: Path) -> None:
        self.ca = CertificateAuthority(folder)
        self.portal = _issue_for_both_ends(self.ca, "pacs-portal")
        self.node = _issue_for_both_ends(self.ca, "pinned-node")


@pytest.fixture
def pki(tmp_path, settings) -> Pki:
    """A CA, the portal's certificate (set as DICOM_TLS_CERTIFICATE / _PRIVATE_KEY) and the pinned node's."""
    issued = Pki(tmp_path)
    settings.DICOM_TLS_CERTIFICATE = str(issued.portal.certificate)
    settings.DICOM_TLS_PRIVATE_KEY = str(issued.portal.key)
    settings.DICOM_TLS_CA_FILE = str(issued.ca.path)
    return issued


def _server_context(pki: Pki, presented: Issued) -> ssl.SSLContext:
    """A node's TLS listener: presents ``presented`` and requires a client certificate from the test CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(presented.certificate), str(presented.key))
    context.load_verify_locations(cafile=str(pki.ca.path))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class Node:
    """A node's storage (and storage commitment) SCP, in plain TCP or TLS; records every A-ASSOCIATE-RQ it got."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.requests: list[str] = []  # per A-ASSOCIATE-RQ: the SHA-256 of the client certificate, "" without TLS
        self.received: dict[str, bytes] = {}
        self.reports: list[Dataset] = []
        self.reported = threading.Event()
        ae = AE(ae_title=PINNED_AE)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, STORAGE_TRANSFER_SYNTAXES)
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self.server = ae.start_server((HOST, self.port), block=False, ssl_context=ssl_context, evt_handlers=[
            (evt.EVT_REQUESTED, self._requested), (evt.EVT_C_STORE, self._store),
            (evt.EVT_N_EVENT_REPORT, self._report)])

    def _requested(self, event: evt.Event) -> None:
        sock = event.assoc.dul.socket.socket
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        self.requests.append(hashlib.sha256(der).hexdigest() if der else "")

    def _store(self, event: evt.Event) -> int:
        try:
            spooled = event.dataset_path
        except AttributeError:
            spooled = None
        # Spooled to a file only while the portal's listener runs in this process (scp.ae_build).
        data = dataset_bytes(Path(spooled)) if spooled else event.encoded_dataset(include_meta=False)
        self.received[str(event.request.AffectedSOPInstanceUID)] = data
        return 0x0000

    def _report(self, event: evt.Event) -> tuple[int, None]:
        self.reports.append(event.event_information)
        self.reported.set()
        return 0x0000, None

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def plain_scp(clinic):
    """The portal's listener (plain TCP), with the test modality registered to call it."""
    register_node(clinic)
    chunked = _config.STORE_RECV_CHUNKED_DATASET
    port = free_port()
    server = scp_start(host=HOST, port=port, ae_title="PACSPORTAL", block=False)
    try:
        yield port
    finally:
        server.shutdown()
        _config.STORE_RECV_CHUNKED_DATASET = chunked


def _pinned(clinic, node: Node, pki: Pki, **extra: object):
    return register_node(clinic, ae_title=PINNED_AE, port=node.port, tls_certificate_pem=pki.node.pem, **extra)


def _move_to_pinned(port: int, clinic, study) -> Dataset:
    return move(port, clinic.ae_title, PINNED_AE, StudyRootQueryRetrieveInformationModelMove,
                QueryRetrieveLevel="STUDY", StudyInstanceUID=study.study_uid)[-1]


# --- C-MOVE -------------------------------------------------------------------------------------------


def test_a_move_to_a_pinned_node_arrives_over_tls_presenting_our_certificate(clinic, pki, plain_scp, stored_ct_study):
    node = Node(_server_context(pki, pki.node))
    _pinned(clinic, node, pki, allow_inbound=False)
    try:
        final = _move_to_pinned(plain_scp, clinic, stored_ct_study)
    finally:
        node.close()

    assert (final.Status, final.NumberOfCompletedSuboperations) == (0x0000, len(stored_ct_study.files))
    assert set(node.received) == set(stored_ct_study.sop_uids)
    assert node.requests == [_sha256(pki.portal)]


def test_dcmtk_storescp_over_tls_receives_a_move_to_its_pinned_node(clinic, pki, plain_scp, stored_ct_study, tmp_path):
    port, out = free_port(), tmp_path / "received"
    out.mkdir()
    register_node(clinic, ae_title=PINNED_AE, port=port, tls_certificate_pem=pki.node.pem, allow_inbound=False)
    # storescp requires a client certificate from the CA (its default, -rc) and speaks nothing but TLS.
    storescp = subprocess.Popen(["/usr/bin/storescp", "+tls", str(pki.node.key), str(pki.node.certificate),
                                 "+cf", str(pki.ca.path), "-aet", PINNED_AE, "-od", str(out), str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_listening(port)
        final = _move_to_pinned(plain_scp, clinic, stored_ct_study)
    finally:
        storescp.terminate()
        output = storescp.communicate(timeout=30)[0].decode(errors="replace")

    assert final.Status == 0x0000, output
    received = {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in out.iterdir()}
    assert received == set(stored_ct_study.sop_uids)


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


# Why a C-MOVE to a pinned node sends nothing: the node's listener (plain TCP, another certificate) or
# our own certificate missing; each time the answer's Error Comment and the audit entry say so.
MOVE_REFUSALS = {
    "node listening in plain TCP": ("plain", "DICOM TLS handshake", "did not complete a DICOM TLS handshake"),
    "node presenting another certificate": (
        "impostor", "Destination's TLS certificate does not match its pin",
        "presented a certificate that does not match its pin",
    ),
    "our certificate not set": (
        "no-certificate", "no TLS certificate", f"{PINNED_AE} requires DICOM TLS but DICOM_TLS_CERTIFICATE is not set.",
    ),
}


@pytest.mark.parametrize("case", MOVE_REFUSALS.values(), ids=MOVE_REFUSALS.keys())
def test_a_move_to_a_pinned_node_that_cannot_be_reached_over_tls_sends_nothing_and_says_why(
    clinic, pki, plain_scp, stored_ct_study, settings, case
):
    kind, comment, reason = case
    if kind == "no-certificate":
        settings.DICOM_TLS_CERTIFICATE = ""
    node = Node(_server_context(pki, _issue_for_both_ends(pki.ca, "impostor")) if kind == "impostor" else None)
    _pinned(clinic, node, pki, allow_inbound=False)
    try:
        final = _move_to_pinned(plain_scp, clinic, stored_ct_study)
    finally:
        node.close()

    assert final.Status == 0xA801
    assert comment in final.ErrorComment
    assert (node.requests, node.received) == ([], {})
    refused = AuditEvent.objects.for_clinic(clinic).get(action="dimse.retrieve", result="failure")
    assert reason in refused.details["reason"]


def test_a_move_to_a_node_without_a_pin_still_goes_in_plain(clinic, pki, plain_scp, stored_ct_study):
    node = Node()
    register_node(clinic, ae_title=PINNED_AE, port=node.port, allow_inbound=False)
    try:
        final = _move_to_pinned(plain_scp, clinic, stored_ct_study)
    finally:
        node.close()

    assert final.Status == 0x0000
    assert node.requests == [""]


# --- storage commitment -------------------------------------------------------------------------------


@pytest.fixture
def tls_scp(pki):
    """The portal's DICOM TLS listener, with the portal's certificate."""
    with running_tls_listener(certificate=pki.portal, ca_file=pki.ca.path) as port:
        yield port


def test_a_storage_commitment_report_to_a_pinned_node_comes_over_tls(clinic, pki, tls_scp, stored_ct_study, settings):
    # One instance without its backup copy holds the report back for a second, well after the release below:
    # the report then has to come on a new association.
    settings.STORAGE_COMMITMENT_WAIT_SECONDS = 1
    lagging = Instance.objects.get(sop_instance_uid=stored_ct_study.sop_uids[1])
    stores.get_store("replica").delete(lagging.object_key)
    Instance.objects.filter(pk=lagging.pk).update(replicated_at=None)
    node = Node(_server_context(pki, pki.node))
    _pinned(clinic, node, pki)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca.path))
    client.load_cert_chain(str(pki.node.certificate), str(pki.node.key))
    ae = AE(ae_title=PINNED_AE)
    ae.add_requested_context(StorageCommitmentPushModel)
    action = commitment_action(Instance.objects.for_clinic(clinic).values_list("sop_class_uid", "sop_instance_uid"))
    try:
        assoc = ae.associate(HOST, tls_scp, ae_title=clinic.ae_title, tls_args=(client, "localhost"))
        assert assoc.is_established
        status, _ = assoc.send_n_action(action, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
        assoc.release()  # the report then comes on a new association, to the node's own listener
        reported = node.reported.wait(20)
    finally:
        node.close()

    assert status.Status == 0x0000
    assert reported
    referenced = {str(i.ReferencedSOPInstanceUID) for i in node.reports[0].ReferencedSOPSequence}
    assert referenced == {stored_ct_study.sop_uids[0]}
    assert node.requests == [_sha256(pki.portal)]


# --- outbound sends -----------------------------------------------------------------------------------


def _send_job(clinic, node_row) -> SendJob:
    study = Instance.objects.for_clinic(clinic).first().series.study
    return SendJob.objects.create(clinic=clinic, node=node_row, study=study,
                                  instances_total=Instance.objects.for_clinic(clinic).count())


def test_a_send_to_a_pinned_node_goes_over_tls(clinic, pki, stored_ct_study):
    node = Node(_server_context(pki, pki.node))
    job = _send_job(clinic, _pinned(clinic, node, pki, allow_inbound=False))
    try:
        services.send_run(job=job)
    finally:
        node.close()

    job.refresh_from_db()
    assert (job.status, job.instances_done) == (JobStatus.DONE, len(stored_ct_study.files))
    assert set(node.received) == set(stored_ct_study.sop_uids)
    assert node.requests == [_sha256(pki.portal)]


def test_a_send_to_a_pinned_node_listening_in_plain_sends_nothing_and_records_why(clinic, pki, stored_ct_study):
    node = Node()
    job = _send_job(clinic, _pinned(clinic, node, pki, allow_inbound=False))
    try:
        with pytest.raises(scu.NodeUnreachable):
            services.send_run(job=job)
    finally:
        node.close()

    job.refresh_from_db()
    assert job.instances_done == 0
    assert f"{PINNED_AE} at {HOST}:{node.port} did not complete a DICOM TLS handshake" in job.error
    assert (node.requests, node.received) == ([], {})


def test_a_send_to_a_pinned_node_is_refused_while_our_certificate_is_not_set(clinic, pki, stored_ct_study, settings):
    settings.DICOM_TLS_CERTIFICATE = ""
    node = Node(_server_context(pki, pki.node))
    job = _send_job(clinic, _pinned(clinic, node, pki, allow_inbound=False))
    try:
        with pytest.raises(scu.NodeUnreachable):
            services.send_run(job=job)
    finally:
        node.close()

    job.refresh_from_db()
    assert job.error == f"{PINNED_AE} requires DICOM TLS but DICOM_TLS_CERTIFICATE is not set."
    assert node.requests == []


def test_a_send_to_a_node_presenting_another_certificate_sends_nothing(clinic, pki, stored_ct_study):
    node = Node(_server_context(pki, _issue_for_both_ends(pki.ca, "impostor")))
    job = _send_job(clinic, _pinned(clinic, node, pki, allow_inbound=False))
    try:
        with pytest.raises(scu.NodeUnreachable, match="presented a certificate that does not match its pin"):
            services.send_run(job=job)
    finally:
        node.close()

    assert (node.requests, node.received) == ([], {})

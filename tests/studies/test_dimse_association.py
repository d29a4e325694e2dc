"""Association control and C-ECHO of ``manage.py dicom_scp``, driven by DCMTK echoscu and pynetdicom."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from studies.dimse.scp import scp_start
from tenants.models import AuditEvent
from tests.databases import database_url
from tests.studies.dimse_support import HOST, MODALITY_AE, dcmtk, free_port, register_node, running_scp

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def scp_port():
    with running_scp() as port:
        yield port


def echo(port: int, *, calling: str = MODALITY_AE, called: str = "CLINIC-A"):
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, port, ae_title=called)
    try:
        if not assoc.is_established:
            return assoc, None
        return assoc, assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()


def test_registered_node_echoes_with_echoscu(clinic, scp_port):
    register_node(clinic)

    result = dcmtk("echoscu", "-aet", MODALITY_AE, "-aec", clinic.ae_title, HOST, scp_port)

    assert result.returncode == 0, result.stderr
    event = AuditEvent.objects.for_clinic(clinic).get(action="dimse.association")
    assert event.result == "success"
    assert event.details == {"calling_ae": MODALITY_AE, "called_ae": clinic.ae_title}
    assert event.ip_address == HOST


def test_registered_node_echoes_with_pynetdicom(clinic, scp_port):
    register_node(clinic)

    assoc, status = echo(scp_port, called=clinic.ae_title)

    assert assoc.is_released
    assert status.Status == 0x0000


def test_unknown_calling_ae_is_rejected_and_audited(clinic, scp_port):
    register_node(clinic)

    result = dcmtk("echoscu", "-aet", "STRANGER", "-aec", clinic.ae_title, HOST, scp_port)

    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr + result.stdout
    event = AuditEvent.objects.for_clinic(clinic).get(action="dimse.association")
    assert event.result == "rejected"
    assert event.details["calling_ae"] == "STRANGER"
    assert event.details["reason"] == "calling AE title not recognized"


def test_unknown_called_ae_is_rejected_and_audited_without_clinic(clinic, scp_port):
    register_node(clinic)

    assoc, _ = echo(scp_port, called="NO_SUCH_CLINIC")

    assert assoc.is_rejected
    assert assoc.acceptor.primitive.diagnostic == 0x07  # called AE title not recognized
    assert not AuditEvent.objects.for_clinic(clinic).filter(action="dimse.association").exists()
    event = AuditEvent.objects.get(clinic=None, action="dimse.association")
    assert event.result == "rejected"
    assert event.details["called_ae"] == "NO_SUCH_CLINIC"


def test_node_of_another_clinic_cannot_call_this_clinic(clinic, other_clinic, scp_port):
    register_node(other_clinic)

    assoc, _ = echo(scp_port, called=clinic.ae_title)

    assert assoc.is_rejected
    assert assoc.acceptor.primitive.diagnostic == 0x03  # calling AE title not recognized


def test_node_without_inbound_right_is_rejected(clinic, scp_port):
    register_node(clinic, allow_inbound=False)

    assoc, _ = echo(scp_port, called=clinic.ae_title)

    assert assoc.is_rejected


def test_node_calling_from_another_address_is_rejected(clinic, scp_port):
    register_node(clinic, allowed_address="10.1.2.0/24")

    assoc, _ = echo(scp_port, called=clinic.ae_title)

    assert assoc.is_rejected
    event = AuditEvent.objects.for_clinic(clinic).get(action="dimse.association")
    assert event.details["reason"] == "calling address not allowed for this AE title"


def test_node_calling_from_its_allowed_network_is_accepted(clinic, scp_port):
    register_node(clinic, allowed_address="127.0.0.0/8")

    assoc, status = echo(scp_port, called=clinic.ae_title)

    assert status.Status == 0x0000


def test_several_simultaneous_associations_are_served(clinic, scp_port):
    register_node(clinic)
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(Verification)
    # Hold eight associations open at once, each echoing several times.
    held = [ae.associate(HOST, scp_port, ae_title=clinic.ae_title) for _ in range(8)]

    def echo_many(assoc) -> list[int]:
        return [assoc.send_c_echo().Status for _ in range(5)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(echo_many, held))
    for assoc in held:
        assoc.release()

    assert all(assoc.is_released for assoc in held)
    assert statuses == [[0x0000] * 5] * 8
    assert AuditEvent.objects.for_clinic(clinic).filter(action="dimse.association", result="success").count() == 8


@pytest.mark.postgresql  # counts connections in pg_stat_activity
def test_associations_leave_no_database_connection_behind(clinic, scp_port):
    from django.db import connection

    register_node(clinic)

    def open_connections() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
            return cursor.fetchone()[0]

    before = open_connections()
    for _ in range(10):
        echo(scp_port, called=clinic.ae_title)
    rejected, _ = echo(scp_port, calling="STRANGER", called=clinic.ae_title)

    # The listener closes a connection just after answering the release: allow it a moment.
    deadline = time.monotonic() + 10
    while open_connections() > before and time.monotonic() < deadline:
        time.sleep(0.1)

    assert rejected.is_rejected
    # Other tests' connections may close meanwhile; what matters is that none was left open here.
    assert open_connections() <= before


@pytest.mark.postgresql  # counts connections in pg_stat_activity
def test_store_associations_keep_one_connection_each_and_leave_none_behind(clinic, scp_port, tmp_path):
    # C-STORE keeps its association's connection from one instance to the next (no reconnect per
    # image) and closes it with the association.
    from django.db import connection
    from pydicom.uid import generate_uid

    from studies.models import Instance
    from tests.dicom_files import write_instance
    from tests.studies.dimse_support import store_with_pynetdicom

    register_node(clinic)

    def open_connections() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
            return cursor.fetchone()[0]

    study, series = generate_uid(), generate_uid()
    before = open_connections()
    statuses = []
    for n in range(3):
        paths = [write_instance(tmp_path, study_uid=study, series_uid=series, instance_number=3 * n + i + 1) for i in range(3)]
        statuses += store_with_pynetdicom(scp_port, clinic.ae_title, paths)

    deadline = time.monotonic() + 10
    while open_connections() > before and time.monotonic() < deadline:
        time.sleep(0.1)

    assert statuses == [0x0000] * 9
    assert Instance.objects.for_clinic(clinic).count() == 9
    assert open_connections() <= before


@pytest.mark.slow
def test_manage_py_dicom_scp_serves_the_clinics_nodes(clinic, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from django.conf import settings

    from tests.studies.dimse_support import free_port

    register_node(clinic)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url(),
           "CELERY_BROKER_URL": "memory://", "PORTAL_VAR_DIR": str(tmp_path)}
    server = subprocess.Popen([sys.executable, str(settings.BASE_DIR / "manage.py"), "dicom_scp", "--host", HOST,
                               "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex((HOST, port)) == 0:
                    break
            time.sleep(0.1)

        accepted = dcmtk("echoscu", "-aet", MODALITY_AE, "-aec", clinic.ae_title, HOST, port)
        refused = dcmtk("echoscu", "-aet", "STRANGER", "-aec", clinic.ae_title, HOST, port)
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert accepted.returncode == 0, accepted.stderr
    assert refused.returncode != 0
    assert server.returncode == 0  # SIGTERM drains and exits cleanly
    assert list(AuditEvent.objects.for_clinic(clinic).filter(action="dimse.association")
                .order_by("sequence").values_list("result", flat=True)) == ["success", "rejected"]


def test_the_listener_answers_without_nagles_delay(clinic):
    register_node(clinic)
    port = free_port()
    server = scp_start(host=HOST, port=port, ae_title="PACSPORTAL", block=False)
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(Verification)
    try:
        assoc = ae.associate(HOST, port, ae_title=clinic.ae_title)
        assert assoc.is_established
        [accepted] = server.active_associations
        raw = accepted.dul.socket.socket
        assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assoc.release()
    finally:
        server.shutdown()

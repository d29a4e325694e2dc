"""DIMSE listener security: loopback by default, nodes tied to an address, throttled guessing, DICOM TLS."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from tests.studies.dimse_support import HOST, free_port

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


def _start_dicom_scp(tmp_path: Path, port: int, bind: str | None = None) -> subprocess.Popen[bytes]:
    """Run manage.py dicom_scp without --host; wait until it listens on ``bind`` (default: loopback)."""
    db = connection.settings_dict
    env = {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
           "CELERY_BROKER_URL": "memory://", "PORTAL_VAR_DIR": str(tmp_path)}
    env.pop("DICOM_BIND_ADDRESS", None)
    if bind:
        env["DICOM_BIND_ADDRESS"] = bind
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

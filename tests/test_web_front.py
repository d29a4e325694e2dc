"""Slow clients cannot starve the web stack that ``make run`` (and production) starts.

The Procfile's web processes are started as honcho would (each line through the shell, the same
environment), on a free port with a private data folder. More connections than gunicorn has threads
then send their request a line (or a body byte) per second, like slowloris; a normal request must
still be answered at once.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path

import pytest
from django.http import HttpResponse
from django.urls import reverse

from portal.front import FrontProxyMiddleware
from studies.models import Instance
from tenants import services
from tenants.roles import Role
from tests.dicom_files import write_large_multiframe
from tests.studies.upload_memory_support import peak_rss_bytes, server_env, stream_upload

ROOT = Path(__file__).resolve().parents[1]
# The processes that serve HTTP: the front and, when there is one, the application server behind it.
WEB_PROCESSES = ("web", "app")
THREADS = 4  # gunicorn's --threads in the Procfile; WEB_CONCURRENCY=1 below
SLOW_CLIENTS = 2 * THREADS


def procfile_commands() -> dict[str, str]:
    commands = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and not line.startswith("#"):
            commands[name.strip()] = command.strip()
    return commands


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthz(port: int, timeout: float) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status
    finally:
        connection.close()


@contextmanager
def running_web_stack(tmp_path: Path, extra_env: dict[str, str] | None = None) -> Iterator[tuple[int, int | None]]:
    """Start the Procfile's HTTP processes; yield (port, pid of the gunicorn master, if there is one)."""
    port = free_port()
    env = {
        **os.environ,
        **(extra_env or {}),
        "PORT": str(port),
        "PORTAL_VAR_DIR": str(tmp_path / "var"),
        "WEB_CONCURRENCY": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    commands = procfile_commands()
    processes = {
        name: subprocess.Popen(
            ["sh", "-c", commands[name]],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"{name}.log").open("wb"),
            start_new_session=True,
        )
        for name in WEB_PROCESSES
        if name in commands
    }
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if healthz(port, timeout=5) == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes.values()):
                logs = {p.name: p.read_text()[-2000:] for p in tmp_path.glob("*.log")}
                raise RuntimeError(f"the web stack did not start: {logs}")
            time.sleep(0.3)
        # The app line ends in `exec gunicorn`, so its shell's pid is gunicorn's master.
        yield port, processes["app"].pid if "app" in processes else None
    finally:
        for process in processes.values():
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def web_stack(tmp_path: Path) -> Iterator[int]:
    with running_web_stack(tmp_path) as (port, _):
        yield port


def open_slow_client(port: int, index: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if index % 2:
        # Slow headers: the request line now, one header line per second after it.
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    else:
        # Slow body: complete headers, then the promised body a byte per second.
        sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n")
    return sock


@pytest.mark.slow
def test_slow_clients_do_not_starve_the_portal(web_stack: int) -> None:
    port = web_stack
    clients = [open_slow_client(port, index) for index in range(SLOW_CLIENTS)]
    try:
        answered = []
        for second in range(6):
            for index, sock in enumerate(clients):
                sock.sendall(f"X-Slow-{second}: 1\r\n".encode() if index % 2 else b"x")
            time.sleep(1)
            started = time.monotonic()
            try:
                status = healthz(port, timeout=3)
            except OSError as error:  # a timeout: every thread is held by a slow client
                status = repr(error)
            answered.append((status, round(time.monotonic() - started, 2)))
        assert all(status == 200 and seconds < 2 for status, seconds in answered), answered
    finally:
        for sock in clients:
            sock.close()


def test_the_client_address_comes_from_the_front_only_over_its_socket(rf) -> None:
    seen = {}

    def view(request):
        seen["address"] = request.META["REMOTE_ADDR"]
        return HttpResponse()

    middleware = FrontProxyMiddleware(view)
    # Through nginx: gunicorn's Unix socket has no peer address, nginx names the client.
    middleware(rf.get("/", REMOTE_ADDR="", HTTP_X_REAL_IP="203.0.113.7"))
    assert seen["address"] == "203.0.113.7"
    # Straight over TCP (tests, a bench): the header is the client's own word and is ignored.
    middleware(rf.get("/", REMOTE_ADDR="198.51.100.2", HTTP_X_REAL_IP="203.0.113.7"))
    assert seen["address"] == "198.51.100.2"


UPLOAD_BYTES = 100 * 1024 * 1024
MEMORY_LIMIT = 160 * 1024 * 1024  # as tests/studies/test_ingest_memory.py: the budget is 256 MB


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_big_upload_through_the_front_is_stored_and_gunicorn_stays_small(clinic, tmp_path, settings) -> None:
    env = server_env(settings, CELERY_BROKER_URL=os.environ.get("TEST_REDIS_URL", "memory://"),
                     FILE_UPLOAD_TEMP_DIR=str(tmp_path))
    token = services.api_token_create(clinic=clinic, name="front-test", role=Role.UPLOADER).secret
    big = write_large_multiframe(tmp_path / "big.dcm", UPLOAD_BYTES)
    url = reverse("studies:upload-file", kwargs={"clinic_slug": clinic.slug})

    with running_web_stack(tmp_path, env) as (port, master):
        status, answer = stream_upload(port=port, url=url, path=big, token=token)
        worker = int(Path(f"/proc/{master}/task/{master}/children").read_text().split()[0])
        peak = peak_rss_bytes(worker)

    assert status == HTTPStatus.CREATED, answer
    assert answer["outcome"] == "stored"
    assert Instance.objects.for_clinic(clinic).get().size_bytes == big.stat().st_size
    assert peak < MEMORY_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"


def test_the_front_serves_ohif_files_itself_and_the_rest_goes_on_to_the_portal(tmp_path, settings) -> None:
    """nginx answers OHIF's prepared files (gzipped, cached, with the viewer's policy); never the folder's stamp."""
    import gzip

    from studies.viewer import ohif

    dist = tmp_path / "app" / "dist"
    dist.mkdir(parents=True)
    (dist / "index.html").write_text("<html></html>")
    bundle = "app.bundle.0123456789abcdef.js"
    (dist / bundle).write_text("var a = 1;" * 300 + ohif.WEBPACK_PUBLIC_PATH)
    settings.OHIF_DIST_DIR = dist
    settings.OHIF_PREPARED_DIR = tmp_path / "prepared"
    ohif.prepare()

    with running_web_stack(tmp_path, {"OHIF_PREPARED_DIR": str(settings.OHIF_PREPARED_DIR)}) as (port, _):
        def get(path: str, **headers: str) -> tuple[http.client.HTTPResponse, bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            return response, response.read()

        packed, body = get(f"/s/any-link/viewer/ohif/{bundle}", **{"Accept-Encoding": "gzip"})
        stamp, _ = get(f"/c/any-clinic/viewer/ohif/{ohif.PREPARED_STAMP}")
        page, _ = get("/c/any-clinic/viewer/ohif/viewer")

    assert packed.status == HTTPStatus.OK and packed.getheader("Content-Encoding") == "gzip"
    assert b"window.PUBLIC_URL" in gzip.decompress(body)
    assert packed.getheader("Content-Type") == "text/javascript"
    assert "immutable" in packed.getheader("Cache-Control")
    assert "'wasm-unsafe-eval'" in packed.getheader("Content-Security-Policy")
    assert stamp.status != HTTPStatus.OK
    assert page.status == HTTPStatus.FOUND  # the portal: sign in first

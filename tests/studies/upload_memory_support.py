"""Measure the web process's memory while it receives a big upload (used by a test and by bench/).

A real gunicorn worker serves the upload endpoint; the client streams a generated multi-frame DICOM
file as multipart without holding it in memory; the server's peak RSS (VmHWM) is read from /proc.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.databases import database_url

ROOT = Path(__file__).resolve().parents[2]
CHUNK = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(settings: object, **extra: str) -> dict[str, str]:
    """The environment of a portal process (gunicorn, the web stack) serving the test's database and stores."""
    return {
        "DATABASE_URL": database_url(),
        "PRIMARY_STORE_URL": settings.PRIMARY_STORE_URL,  # type: ignore[attr-defined]
        "REPLICA_STORE_URL": settings.REPLICA_STORE_URL,  # type: ignore[attr-defined]
        "MASTER_KEYS": settings.MASTER_KEYS,  # type: ignore[attr-defined]
        "CELERY_BROKER_URL": "memory://",
        **extra,
    }


@contextmanager
def gunicorn_server(env: dict[str, str]) -> Iterator[tuple[int, int]]:
    """Run ``gunicorn portal.wsgi`` with one worker; yield (port, worker pid)."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "portal.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--timeout",
            "600",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        worker = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            if pids and _answers(port):
                worker = int(pids[0])
                break
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        if worker is None:
            raise RuntimeError("gunicorn did not start in time")
        yield port, worker
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _answers(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/healthz")
        ok = connection.getresponse().status == 200
        connection.close()
        return ok
    except OSError:
        return False


def peak_rss_bytes(pid: int) -> int:
    """Return the process's peak resident set size (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found")


def current_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


def stream_upload(*, port: int, url: str, path: Path, token: str) -> tuple[int, dict]:
    """POST ``path`` as multipart field ``file``, streamed from disk; return (status, JSON answer)."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\n{path.name}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: application/dicom\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + path.stat().st_size + len(tail)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.putrequest("POST", url)
    connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    connection.putheader("Content-Length", str(length))
    connection.putheader("Authorization", f"Bearer {token}")
    connection.endheaders()
    connection.send(head)
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            connection.send(chunk)
    connection.send(tail)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    try:
        return response.status, json.loads(body)
    except ValueError:
        return response.status, {"raw": body[:500].decode(errors="replace")}

"""Real peers for the tests: a private Orthanc (Debian's package, with its DICOMweb plugin) on free ports.

Orthanc is what hospitals run as a modality, a router or an old archive; tests start their own instance
with a temporary storage folder, talk to it over DICOM and its REST API, and stop it afterwards.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")
HOST = "127.0.0.1"


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class Orthanc:
    """A running Orthanc: its AE title, DICOM port and REST base URL."""

    ae_title: str
    dicom_port: int
    http_port: int
    process: subprocess.Popen[bytes]
    config_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def _call(self, method: str, path: str, body: bytes | None = None) -> object:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            data = response.read()
        return json.loads(data) if data else None

    def upload(self, paths: list[Path]) -> None:
        for path in paths:
            self._call("POST", "/instances", Path(path).read_bytes())

    def instance_uids(self) -> set[str]:
        """The SOP Instance UIDs Orthanc holds."""
        uids = set()
        for orthanc_id in self._call("GET", "/instances"):  # type: ignore[union-attr]
            tags = self._call("GET", f"/instances/{orthanc_id}/simplified-tags")
            uids.add(tags["SOPInstanceUID"])  # type: ignore[index]
        return uids

    def instance_files(self) -> dict[str, bytes]:
        """Every instance Orthanc holds, as its Part 10 file, by SOP Instance UID."""
        files = {}
        for orthanc_id in self._call("GET", "/instances"):  # type: ignore[union-attr]
            tags = self._call("GET", f"/instances/{orthanc_id}/simplified-tags")
            with urllib.request.urlopen(f"{self.url}/instances/{orthanc_id}/file", timeout=60) as response:
                files[tags["SOPInstanceUID"]] = response.read()  # type: ignore[index]
        return files

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def start(self) -> None:
        """(Re)start on the same ports and storage: the same node, back after being down."""
        self.process = _spawn(self.config_path)
        _wait_ready(self)


def _spawn(config_path: Path) -> subprocess.Popen[bytes]:
    log = open(config_path.with_suffix(".log"), "ab")  # noqa: SIM115 - the process owns it
    return subprocess.Popen([str(ORTHANC_BINARY), str(config_path)], stdout=log, stderr=subprocess.STDOUT)


def _wait_ready(orthanc: Orthanc, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if orthanc.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited; see {orthanc.config_path.with_suffix('.log')}")
        with contextlib.suppress(urllib.error.URLError, ConnectionError):
            orthanc._call("GET", "/system")
            return
        time.sleep(0.2)
    raise RuntimeError("Orthanc did not start in time")


@contextlib.contextmanager
def running_orthanc(
    folder: Path, *, ae_title: str = "ORTHANC", modalities: dict[str, tuple[str, str, int]] | None = None
) -> Iterator[Orthanc]:
    """Start a private Orthanc; ``modalities`` names the peers it may send to: {name: (AE, host, port)}."""
    if not ORTHANC_BINARY.exists():
        pytest.skip("Orthanc is not installed (bin/install-system-packages installs it)")
    folder.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_tcp_port(), free_tcp_port()
    config = {
        "Name": "test-peer", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": ae_title, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "HttpServerEnabled": True, "DicomServerEnabled": True,
        "DicomCheckCalledAet": False, "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True,
        "DicomModalities": {name: list(peer) for name, peer in (modalities or {}).items()},
        "Plugins": [str(ORTHANC_PLUGINS)] if ORTHANC_PLUGINS.is_dir() else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StorageCompression": False, "OverwriteInstances": True,
    }
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config))
    orthanc = Orthanc(ae_title, dicom_port, http_port, _spawn(config_path), config_path)
    try:
        _wait_ready(orthanc)
        yield orthanc
    finally:
        orthanc.stop()

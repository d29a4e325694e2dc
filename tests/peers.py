"""Real DICOM peers for the test suite: a private Orthanc (Debian's, with its DICOMweb plugin).

Each Orthanc runs on free HTTP and DICOM ports with a temporary storage folder and a JSON configuration
that names the portal's DIMSE listener (as DICOM modality ``portal``) and, when given, its DICOMweb root
(as DICOMweb server ``portal``, with a bearer token). Everything else is Orthanc's own default, so the
tests see what a hospital's Orthanc does out of the box. Hospitals run Orthanc as a modality, a router,
a client and an old archive: the tests use it as each.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.studies.dimse_support import HOST, free_port

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
ORTHANC_AE = "ORTHANC"
START_TIMEOUT = 30
REQUEST_TIMEOUT = 60


def free_tcp_port() -> int:
    """Any free port (for programs outside the DIMSE tests' port range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class Orthanc:
    """A running Orthanc: its REST root, DICOM port and AE title."""

    url: str
    dicom_port: int
    ae_title: str
    log: Path
    config_path: Path
    process: subprocess.Popen[bytes] | None = None

    def get(self, path: str, **kwargs: Any) -> Any:
        response = requests.get(self.url + path, timeout=REQUEST_TIMEOUT, **kwargs)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any = None, *, data: bytes | None = None) -> Any:
        if data is None:
            response = requests.post(self.url + path, json=body, timeout=REQUEST_TIMEOUT)
        else:
            response = requests.post(self.url + path, data=data, timeout=REQUEST_TIMEOUT)
        if response.status_code >= 400:
            raise AssertionError(f"Orthanc {path} answered {response.status_code}: {response.text}\n{self.log_text()}")
        return response.json() if response.content else None

    def upload(self, paths: list[Path]) -> list[str]:
        """Store files in Orthanc through its REST API; return Orthanc's instance ids."""
        return [self.post("/instances", data=Path(path).read_bytes())["ID"] for path in paths]

    def instance_uids(self) -> set[str]:
        """SOP Instance UIDs of every instance Orthanc holds."""
        uids = set()
        for instance_id in self.get("/instances"):
            uids.add(self.get(f"/instances/{instance_id}/simplified-tags")["SOPInstanceUID"])
        return uids

    def file_of(self, sop_uid: str) -> bytes:
        [found] = self.post("/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}})
        response = requests.get(f"{self.url}/instances/{found}/file", timeout=REQUEST_TIMEOUT)
        response.raise_for_status()
        return response.content

    def instance_files(self) -> dict[str, bytes]:
        """Every instance Orthanc holds, as its Part 10 file, by SOP Instance UID."""
        return {uid: self.file_of(uid) for uid in self.instance_uids()}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def start(self) -> None:
        """Start (again) on the same ports and storage: the same node, back after being down."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([str(ORTHANC_BINARY), "--verbose", str(self.config_path)],
                                            stdout=out, stderr=out)
        _wait_until_up(self, self.process)

    def kill(self) -> None:
        """End it at once: its storage is thrown away, and a graceful stop costs Orthanc over 3 s."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def orthanc_available() -> bool:
    return ORTHANC_BINARY.exists() and ORTHANC_DICOMWEB_PLUGIN.exists()


requires_orthanc = pytest.mark.skipif(
    not orthanc_available(), reason="Orthanc and its DICOMweb plugin are installed by bin/install-system-packages"
)


@contextlib.contextmanager
def running_orthanc(
    folder: Path,
    *,
    portal_ae: str = "",
    portal_dicom_port: int = 0,
    portal_dicomweb_url: str | None = None,
    token: str = "",
    modalities: dict[str, tuple[str, str, int]] | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Iterator[Orthanc]:
    """Start a private Orthanc that knows the portal as its DICOM modality and DICOMweb server ``portal``.

    ``modalities`` adds other peers ({name: (AE title, host, port)}); Orthanc answers C-FIND, C-MOVE and
    C-GET only from the modalities it knows, as it does by default.
    """
    if not orthanc_available():
        pytest.skip("Orthanc and its DICOMweb plugin are installed by bin/install-system-packages")
    storage = folder / "orthanc-storage"
    storage.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    known = dict(modalities or {})
    if portal_ae:
        known["portal"] = (portal_ae, HOST, portal_dicom_port or 104)
    config: dict[str, Any] = {
        "Name": "peer",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AE,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(ORTHANC_DICOMWEB_PLUGIN)],
        "DicomModalities": {name: list(peer) for name, peer in known.items()},
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    if portal_dicomweb_url:
        config["DicomWeb"]["Servers"] = {
            "portal": {"Url": portal_dicomweb_url, "HttpHeaders": {"Authorization": f"Bearer {token}"}}
        }
    config.update(extra_config or {})
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config))
    peer = Orthanc(url=f"http://{HOST}:{http_port}", dicom_port=dicom_port, ae_title=ORTHANC_AE,
                   log=folder / "orthanc.log", config_path=config_path)
    peer.start()
    try:
        yield peer
    finally:
        peer.kill()


def _wait_until_up(peer: Orthanc, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc stopped at start-up:\n{peer.log_text()}")
        with contextlib.suppress(requests.RequestException):
            # 401: up, with authentication enabled (a source that wants credentials).
            if requests.get(peer.url + "/system", timeout=2).status_code in (200, 401):
                return
        time.sleep(0.2)
    raise RuntimeError(f"Orthanc did not start in {START_TIMEOUT} s:\n{peer.log_text()}")

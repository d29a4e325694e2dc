"""A DICOMweb migration source's answers are checked against what was asked (a wrong proxy, a hostile archive).

The source here is a small local HTTP server that lists one study by QIDO-RS and answers WADO-RS with the
parts the test chose, so it can answer a study with another patient's study or an instance with another.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.urls import reverse
from pydicom import dcmread

from studies.ingest import instance_ingest
from studies.models import Instance, Study
from studies.outbound import services
from studies.outbound.models import JobStatus
from tests.dicom_files import StudyFiles, write_study

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("tasks_run_inline")]

BOUNDARY = "fake-source-boundary"


@pytest.fixture(autouse=True)
def _loopback_allowed(settings):
    settings.DICOMWEB_SOURCE_ALLOWED_NETWORKS = ["127.0.0.0/8"]


class _Source(http.server.ThreadingHTTPServer):
    """A DICOMweb source listing ``listed`` (files of one study); WADO-RS answers with ``answers[path]``."""

    def __init__(self, listed: list[Path]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.listed = listed
        self.answers: dict[str, list[Path]] = {}
        self.asked: list[str] = []  # each request's path, in order

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/dicom-web"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Source

    def do_GET(self) -> None:
        path = urlsplit(self.path).path.removeprefix("/dicom-web/")
        self.server.asked.append(path)
        first = dcmread(self.server.listed[0], stop_before_pixels=True)
        if path == "studies":
            self._json(
                [
                    {
                        "0020000D": _ui(first.StudyInstanceUID),
                        "00201208": {"vr": "IS", "Value": [len(self.server.listed)]},
                    }
                ]
            )
        elif path == f"studies/{first.StudyInstanceUID}/instances":
            self._json([_listed(dcmread(p, stop_before_pixels=True)) for p in self.server.listed])
        else:
            self._multipart(self.server.answers[path])

    def _json(self, body: list[dict]) -> None:
        self._send("application/dicom+json", json.dumps(body).encode())

    def _multipart(self, files: list[Path]) -> None:
        body = (
            b"".join(
                f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes()
                for path in files
            )
            + f"\r\n--{BOUNDARY}--".encode()
        )
        self._send(f'multipart/related; type="application/dicom"; boundary={BOUNDARY}', body)

    def _send(self, content_type: str, body: bytes) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _ui(value: object) -> dict:
    return {"vr": "UI", "Value": [str(value)]}


def _listed(ds) -> dict:
    return {
        "0020000D": _ui(ds.StudyInstanceUID),
        "0020000E": _ui(ds.SeriesInstanceUID),
        "00080018": _ui(ds.SOPInstanceUID),
        "00080016": _ui(ds.SOPClassUID),
    }


def _instance_path(study: StudyFiles, index: int) -> str:
    return f"studies/{study.study_uid}/series/{study.series_uids[0]}/instances/{study.sop_uids[index]}"


@contextlib.contextmanager
def _serving(listed: list[Path]) -> Iterator[_Source]:
    source = _Source(listed)
    thread = threading.Thread(target=source.serve_forever, daemon=True)
    thread.start()
    try:
        yield source
    finally:
        source.shutdown()
        source.server_close()


def _stored_uids(clinic) -> set[str]:
    return set(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", flat=True))


def test_a_study_retrieve_answered_with_another_patients_study_stores_only_the_asked_study(clinic, tmp_path, caplog):
    asked = write_study(tmp_path / "asked", patient_id="ASKED", copies=2)
    other = write_study(tmp_path / "other", patient_id="SOMEONE-ELSE")
    with _serving(asked.files) as source:
        # The second instance's place in the study's answer is taken by the other patient's instance.
        source.answers[f"studies/{asked.study_uid}"] = [asked.files[0], other.files[0]]
        source.answers[_instance_path(asked, 1)] = [asked.files[1]]

        with caplog.at_level(logging.WARNING, logger="studies.outbound.services"):
            job = services.migration_create(clinic=clinic, dicomweb_url=source.url)

    job.refresh_from_db()
    assert _stored_uids(clinic) == set(asked.sop_uids)
    assert not Study.objects.filter(study_instance_uid=other.study_uid).exists()
    assert (job.status, job.instances_done, job.instances_failed) == (JobStatus.DONE, 2, 0)
    assert "another study" in caplog.text


def test_an_instance_retrieve_answered_with_another_instance_stores_nothing_and_reports_it_missing(
    client, clinic, admin, tmp_path, caplog
):
    study = write_study(tmp_path / "study", copies=3)
    instance_ingest(clinic=clinic, source_path=str(study.files[0]), source="test")
    with _serving(study.files[:2]) as source:
        # Same study, but not the instance asked for (nor one the source listed).
        source.answers[_instance_path(study, 1)] = [study.files[2]]

        with caplog.at_level(logging.WARNING, logger="studies.outbound.services"):
            job = services.migration_create(clinic=clinic, dicomweb_url=source.url)

    job.refresh_from_db()
    assert _stored_uids(clinic) == {study.sop_uids[0]}
    assert (job.status, job.instances_done, job.instances_failed) == (JobStatus.FAILED, 1, 1)
    assert services.migration_report(job=job).missing == [study.sop_uids[1]]
    assert "was refused" in caplog.text
    # Asked for once: the source would answer with the same wrong instance; the job's page says why.
    assert source.asked.count(_instance_path(study, 1)) == 1
    client.force_login(admin)
    page = client.get(reverse("outbound:migration", kwargs={"clinic_slug": clinic.slug, "migration_uuid": job.uuid}))
    assert f"{study.sop_uids[1]} <span class=\"muted\">refused: SOP Instance UID differs" in page.content.decode()

"""The batched store path: exact per-instance answers, faults mid-batch, concurrency, crashes, real peers.

Covers issue 12's tests (a STOW with one bad part; storage failing mid-batch; concurrent batches into one
study; a worker killed mid-batch), issue 13 items 1, 2, 3 and 12 (chunked STOW, STOW to a study, same
content across protocols, XML answers) and issue 11 items 6 to 8 (bounded STOW, full store, sweep).
"""

from __future__ import annotations

import ast
import hashlib
import os
import signal
import threading
import time
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path
from unittest import mock
from xml.etree import ElementTree

import pytest
import requests
from celery import current_app
from django.conf import settings as django_settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from pydicom import dcmread
from pydicom.uid import generate_uid

from studies import ingest
from studies.anonymize import services as anonymize
from studies.anonymize import tasks as study_tasks
from studies.archive import objects, stores
from studies.archive.errors import StorageUnavailable
from studies.backup import replication
from studies.models import Instance, Series, Study
from tenants.models import Clinic
from tests.dicom_files import write_instance
from tests.factories import token_for
from tests.studies.dicomweb_support import multipart_body
from tests.studies.dimse_support import register_node, running_scp, store_with_pynetdicom, tasks_inline
from tests.studies.upload_memory_support import gunicorn_server, server_env

BASE = "/dicomweb/clinic-a/"
FAILED, REFERENCED = "00081198", "00081199"
SYSTEM = ingest.Origin.system(source="test")


@pytest.fixture
def api(client, clinic):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(clinic, role='uploader')}"
    return client


def _study_files(folder: Path, count: int, *, study_uid: str | None = None, series: int = 1) -> list[Path]:
    study_uid = study_uid or generate_uid()
    series_uids = [generate_uid() for _ in range(series)]
    return [
        write_instance(folder, study_uid=study_uid, series_uid=series_uids[n % series], instance_number=n + 1)
        for n in range(count)
    ]


def _post(client, paths, url=BASE + "studies", body=None, **extra):
    built, content_type = multipart_body(paths)
    return client.generic("POST", url, built if body is None else body, content_type=content_type, **extra)


def _reasons(response) -> list[int]:
    return [item["00081197"]["Value"][0] for item in response.json()[FAILED].get("Value", [])]


def _used_bytes(clinic: Clinic) -> int:
    return Clinic.objects.get(pk=clinic.pk).used_bytes


def _postgresql() -> bool:
    return django_settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


# --- STOW-RS: exact answers ------------------------------------------------------------------------


def test_stow_with_one_bad_part_stores_the_good_ones_and_names_the_bad_one(api, clinic, tmp_path):
    good = _study_files(tmp_path, 2)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\x00" * 128 + b"DICM" + b"broken" * 10)

    response = _post(api, [good[0], bad, good[1]])

    assert response.status_code == HTTPStatus.ACCEPTED
    assert len(response.json()[REFERENCED]["Value"]) == 2
    assert _reasons(response) == [0xC000]
    assert Instance.objects.for_clinic(clinic).count() == 2
    assert _used_bytes(clinic) == sum(p.stat().st_size for p in good)


def test_stow_to_a_study_refuses_instances_of_another_study_alone(api, clinic, tmp_path):
    study_uid = generate_uid()
    matching = _study_files(tmp_path / "a", 2, study_uid=study_uid)
    stray = _study_files(tmp_path / "b", 1)

    response = _post(api, [matching[0], stray[0], matching[1]], url=f"{BASE}studies/{study_uid}")

    assert response.status_code == HTTPStatus.ACCEPTED
    assert _reasons(response) == [0xC409]
    assert set(Instance.objects.for_clinic(clinic).values_list("series__study__study_instance_uid", flat=True)) == {
        study_uid
    }


def test_outsider_cannot_stow_into_another_clinic(client, clinic, other_clinic, tmp_path):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(other_clinic, role='uploader')}"
    files = _study_files(tmp_path, 1)

    response = _post(client, files)

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert not Instance.objects.exists()


def test_stow_answers_in_xml_when_the_client_asks_for_it(api, tmp_path):
    files = _study_files(tmp_path, 2)

    response = _post(api, files, HTTP_ACCEPT="application/dicom+xml")

    assert response.status_code == HTTPStatus.OK
    assert response["Content-Type"] == "application/dicom+xml"
    root = ElementTree.fromstring(response.content)
    ns = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
    referenced = root.find("d:DicomAttribute[@tag='00081199']", ns)
    assert referenced is not None and len(referenced.findall("d:Item", ns)) == 2
    sop_uids = {v.text for v in referenced.findall("d:Item/d:DicomAttribute[@tag='00081155']/d:Value", ns)}
    assert sop_uids == {str(dcmread(p).SOPInstanceUID) for p in files}


def test_stow_declared_larger_than_the_limit_is_413_and_stores_nothing(api, clinic, tmp_path, settings):
    settings.STOW_MAX_BYTES = 1000
    files = _study_files(tmp_path, 2)

    response = _post(api, files)

    assert response.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert response.json()["error"] == "request_too_large"
    assert not Instance.objects.exists()
    assert _used_bytes(clinic) == 0


def test_stow_parts_past_the_limit_are_named_as_not_stored(api, clinic, tmp_path, settings):
    settings.STOW_MAX_PARTS = 2
    files = _study_files(tmp_path, 3)

    response = _post(api, files)

    assert response.status_code == HTTPStatus.ACCEPTED
    assert len(response.json()[REFERENCED]["Value"]) == 2
    assert _reasons(response) == [0xA700]
    refused = response.json()[FAILED]["Value"][0]["00081155"]["Value"][0]
    assert refused == str(dcmread(files[2]).SOPInstanceUID)
    assert Instance.objects.for_clinic(clinic).count() == 2


def test_a_body_cut_short_after_stored_parts_answers_what_was_stored(api, clinic, tmp_path):
    files = _study_files(tmp_path, 3)
    body, _ = multipart_body(files)
    cut = body[: body.rindex(b"--test-boundary-7d1e\r\n") + 200]  # inside the third part

    response = _post(api, files, body=cut)

    assert response.status_code == HTTPStatus.ACCEPTED
    assert "broke off" in response["Warning"]
    stored = {item["00081155"]["Value"][0] for item in response.json()[REFERENCED]["Value"]}
    assert stored == {str(dcmread(p).SOPInstanceUID) for p in files[:2]}
    assert set(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", flat=True)) == stored


def test_stow_batches_send_one_replication_message_per_batch(
    api, clinic, tmp_path, settings, django_capture_on_commit_callbacks
):
    settings.INGEST_BATCH_SIZE = 4
    files = _study_files(tmp_path, 10)
    task = current_app.tasks[replication.INSTANCES_REPLICATE_TASK]

    with mock.patch.object(task, "delay") as delay, django_capture_on_commit_callbacks(execute=True):
        response = _post(api, files)

    assert response.status_code == HTTPStatus.OK
    assert delay.call_count == 3  # 4 + 4 + 2 instances
    queued = sorted(i for call in delay.call_args_list for i in call.kwargs["instance_ids"])
    assert queued == sorted(Instance.objects.for_clinic(clinic).values_list("pk", flat=True))


# --- Same content across protocols -----------------------------------------------------------------


def _with_other_file_meta(path: Path, target: Path) -> Path:
    ds = dcmread(path)
    ds.file_meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.7777.1"
    ds.file_meta.ImplementationVersionName = "OTHER_SENDER"
    ds.file_meta.SourceApplicationEntityTitle = "ROUTER"
    ds.save_as(target, enforce_file_format=True)
    return target


def test_the_same_image_with_other_file_meta_is_already_present_not_a_conflict(api, clinic, tmp_path):
    [original] = _study_files(tmp_path, 1)
    ingest.instance_ingest(clinic=clinic, source_path=str(original), origin=SYSTEM)
    resent = _with_other_file_meta(original, tmp_path / "resent.dcm")
    assert hashlib.sha256(resent.read_bytes()).digest() != hashlib.sha256(original.read_bytes()).digest()

    response = _post(api, [resent])

    assert response.status_code == HTTPStatus.OK
    assert Instance.objects.for_clinic(clinic).count() == 1


def test_other_content_under_the_same_uid_is_still_a_conflict(api, clinic, tmp_path):
    [original] = _study_files(tmp_path, 1)
    ingest.instance_ingest(clinic=clinic, source_path=str(original), origin=SYSTEM)
    ds = dcmread(original)
    ds.PatientName = "OTHER^PATIENT"
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed, enforce_file_format=True)

    response = _post(api, [changed])

    assert response.status_code == HTTPStatus.CONFLICT
    assert _reasons(response) == [0x0111]


@pytest.mark.django_db(transaction=True)
def test_an_image_stored_by_stow_then_sent_by_c_store_is_success(client, clinic, tmp_path):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(clinic, role='uploader')}"
    [original] = _study_files(tmp_path, 1)
    stowed = _with_other_file_meta(original, tmp_path / "stowed.dcm")
    register_node(clinic)

    with tasks_inline():
        assert _post(client, [stowed]).status_code == HTTPStatus.OK
        with running_scp() as port:
            statuses = store_with_pynetdicom(port, clinic.ae_title, [original])

    assert statuses == [0x0000]
    assert Instance.objects.for_clinic(clinic).count() == 1


# --- Faults: a full store, storage failing mid-batch ------------------------------------------------


def test_a_full_primary_store_is_a_retryable_refusal_for_stow_and_uploads(api, clinic, tmp_path, settings):
    settings.PRIMARY_STORE_MIN_FREE_BYTES = 10**18  # more than any disk has free: the store counts as full
    files = _study_files(tmp_path, 2)

    stow = _post(api, files)
    upload = api.post(f"/api/v1/clinics/{clinic.slug}/uploads/", {"file": files[0].open("rb")})

    assert stow.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert stow["Retry-After"]
    assert _reasons(stow) == [0x0110, 0x0110]
    assert upload.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert "full" in upload.json()["reason"]
    assert not Instance.objects.exists()
    assert _used_bytes(clinic) == 0


@pytest.mark.django_db(transaction=True)
def test_a_full_primary_store_answers_c_store_with_out_of_resources(clinic, tmp_path, settings):
    settings.PRIMARY_STORE_MIN_FREE_BYTES = 10**18
    files = _study_files(tmp_path, 1)
    register_node(clinic)

    with tasks_inline(), running_scp() as port:
        statuses = store_with_pynetdicom(port, clinic.ae_title, files)

    assert statuses == [0xA700]
    assert not Instance.objects.exists()


def test_storage_failing_mid_batch_leaves_no_row_and_no_quota_for_what_was_not_acknowledged(
    clinic, tmp_path, monkeypatch
):
    files = _study_files(tmp_path, 3)
    real_put = stores.LocalStore.put
    calls = []

    def flaky_put(self, key, fileobj, **options):  # the storage boundary: the second instance object's write fails
        if self.name == "primary" and "/objects/" in key:
            calls.append(key)
        if len(calls) == 2 and calls[-1] == key:
            raise StorageUnavailable("The primary store did not answer.")
        return real_put(self, key, fileobj, **options)

    monkeypatch.setattr(stores.LocalStore, "put", flaky_put)

    items = ingest.instances_ingest(clinic=clinic, paths=[str(p) for p in files], origin=SYSTEM)

    assert [type(i.error).__name__ if i.error else i.result.outcome for i in items] == [
        "stored",
        "StorageUnavailable",
        "stored",
    ]
    assert set(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", flat=True)) == {
        items[0].parsed.sop_instance_uid,
        items[2].parsed.sop_instance_uid,
    }
    assert _used_bytes(clinic) == files[0].stat().st_size + files[2].stat().st_size
    study = Study.objects.for_clinic(clinic).get()
    assert study.number_of_instances == 2
    assert not stores.get_store("primary").exists(calls[1])


def test_a_batch_is_indexed_only_once_its_folder_entries_are_durable(clinic, tmp_path, monkeypatch):
    # The objects of a batch share one folder fsync, done before the index transaction: when it fails,
    # nothing of the batch is acknowledged, indexed or counted, and its objects are removed.
    files = _study_files(tmp_path, 3)
    keys: list[str] = []
    real_put = stores.LocalStore.put

    def recording_put(self, key, fileobj, **options):
        if "/objects/" in key:
            keys.append(key)
        return real_put(self, key, fileobj, **options)

    def failing_sync(self, keys):
        raise StorageUnavailable("The primary store could not write: Input/output error.")

    monkeypatch.setattr(stores.LocalStore, "put", recording_put)
    monkeypatch.setattr(stores.LocalStore, "folders_sync", failing_sync)

    items = ingest.instances_ingest(clinic=clinic, paths=[str(p) for p in files], origin=SYSTEM)

    assert all(isinstance(i.error, StorageUnavailable) for i in items)
    assert not Instance.objects.for_clinic(clinic).exists()
    assert _used_bytes(clinic) == 0
    assert len(keys) == 3 and not any(stores.get_store("primary").exists(k) for k in keys)


def test_the_folder_of_a_batch_is_synced_once_before_its_rows_are_written(clinic, tmp_path, monkeypatch):
    files = _study_files(tmp_path, 4)
    synced: list[list[str]] = []
    real_sync = stores.LocalStore.folders_sync

    def recording_sync(self, keys):
        keys = list(keys)
        # Nothing of the batch is indexed yet when its names are made durable.
        assert not Instance.objects.for_clinic(clinic).exists()
        synced.append(keys)
        return real_sync(self, keys)

    monkeypatch.setattr(stores.LocalStore, "folders_sync", recording_sync)

    items = ingest.instances_ingest(clinic=clinic, paths=[str(p) for p in files], origin=SYSTEM)

    assert [i.result.outcome for i in items] == ["stored"] * 4
    assert len(synced) == 1 and sorted(synced[0]) == sorted(i.result.instance.object_key for i in items)


def test_an_index_failure_undoes_the_whole_batch(clinic, tmp_path, monkeypatch):
    files = _study_files(tmp_path, 3)
    keys: list[str] = []
    real_put = stores.LocalStore.put

    def recording_put(self, key, fileobj, **options):
        if "/objects/" in key:
            keys.append(key)
        return real_put(self, key, fileobj, **options)

    monkeypatch.setattr(stores.LocalStore, "put", recording_put)
    # The database boundary: the audit entry of the new study cannot be written.
    monkeypatch.setattr("studies.ingest.pipeline.audit_record", mock.Mock(side_effect=OSError("disk gone")))

    items = ingest.instances_ingest(clinic=clinic, paths=[str(p) for p in files], origin=SYSTEM)

    assert all(isinstance(i.error, StorageUnavailable) for i in items)
    assert not Instance.objects.exists() and not Study.objects.exists()
    assert _used_bytes(clinic) == 0
    assert len(keys) == 3 and not any(stores.get_store("primary").exists(k) for k in keys)


# --- Concurrency and crashes (PostgreSQL: other connections must see the test database) -------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_into_one_study_keep_counters_exact(clinic, tmp_path):
    if not _postgresql():
        pytest.skip("needs PostgreSQL: concurrent writers in threads")
    study_uid, series_uids = generate_uid(), [generate_uid(), generate_uid()]
    batches = [
        [
            write_instance(
                tmp_path / f"b{b}", study_uid=study_uid, series_uid=series_uids[(b + n) % 2], instance_number=b * 10 + n
            )
            for n in range(5)
        ]
        for b in range(4)
    ]
    errors: list[BaseException] = []

    def run(paths: list[Path]) -> None:
        try:
            items = ingest.instances_ingest(clinic=clinic, paths=[str(p) for p in paths], origin=SYSTEM)
            errors.extend(i.error for i in items if i.error is not None)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(paths,)) for paths in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    study = Study.objects.for_clinic(clinic).get()
    sizes = [p.stat().st_size for paths in batches for p in paths]
    assert study.number_of_instances == 20
    assert study.number_of_series == 2
    assert study.size_bytes == sum(sizes)
    assert sorted(Series.objects.for_clinic(clinic).values_list("number_of_instances", flat=True)) == [10, 10]
    assert _used_bytes(clinic) == sum(sizes)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_chunked_stow_and_a_worker_killed_mid_batch_lose_nothing_acknowledged(clinic, tmp_path, settings):
    env = server_env(settings, INGEST_BATCH_SIZE="4")
    token = token_for(clinic, role="uploader")
    first = _study_files(tmp_path / "first", 3)
    many = _study_files(tmp_path / "many", 60)
    url_path = f"/dicomweb/{clinic.slug}/studies"

    def chunks(paths: list[Path], pause: float = 0.0):
        # A generator body: requests sends it with Transfer-Encoding: chunked, as Orthanc does.
        for path in paths:
            yield b"--b0\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes() + b"\r\n"
            time.sleep(pause)
        yield b"--b0--\r\n"

    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=b0',
    }
    with gunicorn_server(env) as (port, worker_pid):
        answer = requests.post(f"http://127.0.0.1:{port}{url_path}", data=chunks(first), headers=headers, timeout=60)
        assert answer.status_code == HTTPStatus.OK, answer.text
        assert len(answer.json()[REFERENCED]["Value"]) == 3

        sender = threading.Thread(target=lambda: _post_ignoring_errors(port, url_path, chunks(many, 0.05), headers))
        sender.start()
        deadline = time.monotonic() + 60
        while Instance.objects.for_clinic(clinic).count() < 3 + 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(worker_pid, signal.SIGKILL)
        sender.join(timeout=60)

    rows = list(Instance.objects.for_clinic(clinic))
    assert 3 + 8 <= len(rows) < 3 + 60
    for instance in rows:  # every committed row has its whole object, decryptable and intact
        with objects.object_open(clinic=clinic, key=instance.object_key, store="primary") as source:
            assert hashlib.sha256(source.read()).hexdigest() == instance.sha256
    counted = sum(s.number_of_instances for s in Study.objects.for_clinic(clinic))
    assert counted == len(rows)
    assert _used_bytes(clinic) == sum(i.size_bytes for i in rows)


def _post_ignoring_errors(port: int, path: str, body, headers: dict[str, str]) -> None:
    try:
        requests.post(f"http://127.0.0.1:{port}{path}", data=body, headers=headers, timeout=60)
    except requests.RequestException:
        pass  # the worker was killed under it: that is the point


# --- The replication sweep ----------------------------------------------------------------------------


def test_the_sweep_does_not_queue_again_what_is_already_queued(clinic, tmp_path, django_capture_on_commit_callbacks):
    files = _study_files(tmp_path, 3)
    task = current_app.tasks[replication.INSTANCES_REPLICATE_TASK]
    with mock.patch.object(task, "delay") as sent, django_capture_on_commit_callbacks(execute=True):
        ingest.instances_ingest(clinic=clinic, paths=[str(p) for p in files], origin=SYSTEM)
    assert sent.call_count == 1  # ingest's own message, one for the batch
    with mock.patch.object(task, "delay") as delay:
        assert replication.replication_sweep() == 0  # fresh: ingest's message is on its way

        # Still pending a few minutes later: ingest's message (queued with the commit) is taken as lost.
        Instance.objects.update(stored_at=timezone.now() - timedelta(minutes=5))
        assert replication.replication_sweep() == 3
        assert replication.replication_sweep() == 0  # the sweep's own message is on its way
        Instance.objects.update(replication_queued_at=timezone.now() - replication.REQUEUE_AFTER - timedelta(1))
        assert replication.replication_sweep() == 3  # lost too, it seems: queued again, in one message

    assert delay.call_count == 2


def test_ingest_queues_replication_without_a_statement_of_its_own(clinic, tmp_path, django_capture_on_commit_callbacks):
    """The batch's rows are committed as "queued by ingest": the after-commit step only sends the message."""
    files = _study_files(tmp_path, 3)
    task = current_app.tasks[replication.INSTANCES_REPLICATE_TASK]
    with mock.patch.object(task, "delay") as sent:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            ingest.instances_ingest(clinic=clinic, paths=[str(p) for p in files], origin=SYSTEM)
        with CaptureQueriesContext(connection) as after_commit:
            for callback in callbacks:
                callback()
    assert sent.call_count == 1
    assert not [q for q in after_commit.captured_queries if "studies_instance" in q["sql"]]
    assert set(Instance.objects.values_list("replication_queued_at", flat=True)) == {None}


# --- Layers -----------------------------------------------------------------------------------------


def _imports(path: Path) -> tuple[set[str], list[str]]:
    """Modules a file imports, and the ones it imports inside functions."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    nested: list[str] = []
    for node in ast.walk(tree):
        found = (
            [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else ([alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
        )
        names.update(found)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested += [
                (inner.module or "") if isinstance(inner, ast.ImportFrom) else inner.names[0].name
                for inner in ast.walk(node)
                if isinstance(inner, (ast.Import, ast.ImportFrom))
            ]
    return names, nested


def test_the_archive_and_ingest_import_nothing_above_them_and_nothing_inside_functions():
    studies = Path(__file__).resolve().parents[2] / "studies"
    above = (
        "studies.backup",
        "studies.anonymize",
        "studies.quarantine",
        "studies.browse.thumbnails",
        "studies.dicomweb",
        "studies.dimse",
    )
    for path in [*sorted((studies / "archive").glob("*.py")), *sorted((studies / "ingest").glob("*.py"))]:
        names, nested = _imports(path)

        assert not [name for name in names if name.startswith(above)], path.name
        if path.parent.name == "ingest":
            assert nested == [], path.name


# --- Anonymization jobs: one ingest batch per task -----------------------------------------------------


def test_an_anonymization_job_is_stored_in_batches_with_one_replication_message_each(
    clinic, tmp_path, django_capture_on_commit_callbacks
):
    files = _study_files(tmp_path, 5, series=2)
    items = ingest.instances_ingest(clinic=clinic, paths=[str(p) for p in files], origin=SYSTEM)
    source = items[0].result.instance.series.study
    project = anonymize.project_create(clinic=clinic, name="Teaching")
    job = anonymize.job_create(clinic=clinic, project=project, studies=[source])
    study_tasks.anonymization_job_start(clinic_id=clinic.pk, job_id=job.pk)
    ids = anonymize.job_instances(job)
    task = current_app.tasks[replication.INSTANCES_REPLICATE_TASK]

    with mock.patch.object(task, "delay") as delay, django_capture_on_commit_callbacks(execute=True):
        study_tasks.anonymization_instances(clinic_id=clinic.pk, job_id=job.pk, instance_ids=ids)
        study_tasks.anonymization_instances(clinic_id=clinic.pk, job_id=job.pk, instance_ids=ids)  # redelivered

    job.refresh_from_db()
    assert (job.status, job.done, job.failed) == ("done", 5, 0)
    result = Study.objects.for_clinic(clinic).exclude(pk=source.pk).get()
    assert result.number_of_instances == 5 and result.number_of_series == 2
    assert delay.call_count == 1

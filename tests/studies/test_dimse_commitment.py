"""Storage Commitment Push Model: committed only when the instance and its backup copy exist."""

from __future__ import annotations

import threading
import time

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from studies.archive import stores
from studies.backup.replication import instance_replicate
from studies.dimse.commitment import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT_INSTANCE,
    PROCESSING_FAILURE,
    commitment_check,
)
from studies.ingest import instance_ingest
from studies.models import Instance
from tenants.models import AuditEvent
from tests.dicom_files import write_study
from tests.studies.commitment_support import Modality
from tests.studies.dimse_support import register_node, running_scp

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("tasks_run_inline")]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _references(study) -> list[tuple[str, str]]:
    return [
        (str(dcmread(p, stop_before_pixels=True).SOPClassUID), uid)
        for p, uid in zip(study.files, study.sop_uids, strict=True)
    ]


def _not_backed_up(instance: Instance) -> None:
    """As if the backup copy had not been made yet: no replica object, not marked replicated."""
    stores.get_store("replica").delete(instance.object_key)
    Instance.objects.filter(pk=instance.pk).update(replicated_at=None)


@pytest.fixture
def modality(clinic):
    listening = Modality()
    register_node(clinic, port=listening.port)
    yield listening
    listening.close()


@pytest.fixture
def scp_port(modality):
    with running_scp() as port:
        yield port


def _committed(info: Dataset) -> set[str]:
    return {str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])}


def _failed(info: Dataset) -> dict[str, int]:
    return {str(i.ReferencedSOPInstanceUID): int(i.FailureReason) for i in info.get("FailedSOPSequence", [])}


def test_backed_up_instances_are_committed_on_the_same_association(clinic, modality, scp_port, stored_ct_study):
    status = modality.request(scp_port, clinic.ae_title, _references(stored_ct_study), keep_open=True)

    assert status == 0x0000
    [(event_type, info, how)] = modality.reports
    assert (event_type, how) == (1, "same")
    assert info.TransactionUID == modality.transaction_uid
    assert _committed(info) == set(stored_ct_study.sop_uids)
    assert "FailedSOPSequence" not in info
    # The audit entry is written once the report has been sent: wait for it rather than race it.
    audited = AuditEvent.objects.for_clinic(clinic).filter(action="dimse.commitment", result="success")
    deadline = time.monotonic() + 10
    while not audited.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert audited.exists()


def test_report_comes_on_a_new_association_when_the_modality_has_released(clinic, modality, scp_port, stored_ct_study):
    asked = time.monotonic()
    modality.request(scp_port, clinic.ae_title, _references(stored_ct_study), keep_open=False)

    # Promptly: not after the 30 s a modality would wait if the archive waited out its DIMSE timeout
    # for an answer on the association the modality had released.
    assert time.monotonic() - asked < 15
    [(event_type, info, how)] = modality.reports
    assert (event_type, how) == (1, "new")
    assert _committed(info) == set(stored_ct_study.sop_uids)


def test_unknown_and_other_clinics_instances_fail(clinic, other_clinic, modality, scp_port, stored_ct_study, tmp_path):
    theirs = write_study(tmp_path / "theirs")
    instance_ingest(clinic=other_clinic, source_path=str(theirs.files[0]), source="test")
    unknown = (CT_IMAGE_STORAGE, generate_uid())
    references = [*_references(stored_ct_study)[:1], unknown, (CT_IMAGE_STORAGE, theirs.sop_uids[0])]

    modality.request(scp_port, clinic.ae_title, references, keep_open=True)

    [(event_type, info, _)] = modality.reports
    assert event_type == 2
    assert _committed(info) == {stored_ct_study.sop_uids[0]}
    assert _failed(info) == {unknown[1]: NO_SUCH_OBJECT_INSTANCE, theirs.sop_uids[0]: NO_SUCH_OBJECT_INSTANCE}


@pytest.mark.slow
def test_instance_without_backup_copy_is_never_committed(clinic, modality, scp_port, stored_ct_study, settings):
    settings.STORAGE_COMMITMENT_WAIT_SECONDS = 1
    lagging = Instance.objects.get(sop_instance_uid=stored_ct_study.sop_uids[1])
    _not_backed_up(lagging)

    modality.request(scp_port, clinic.ae_title, _references(stored_ct_study), keep_open=True)

    [(event_type, info, _)] = modality.reports
    assert event_type == 2
    assert _committed(info) == {stored_ct_study.sop_uids[0]}
    assert _failed(info) == {stored_ct_study.sop_uids[1]: PROCESSING_FAILURE}


@pytest.mark.slow
def test_instance_backed_up_while_the_request_waits_is_reported_committed(
    clinic, modality, scp_port, stored_ct_study, settings
):
    settings.STORAGE_COMMITMENT_WAIT_SECONDS = 30
    lagging = Instance.objects.get(sop_instance_uid=stored_ct_study.sop_uids[1])
    _not_backed_up(lagging)

    def replicate_soon() -> None:
        time.sleep(1.5)
        instance_replicate(instance=Instance.objects.get(pk=lagging.pk))

    worker = threading.Thread(target=replicate_soon)
    worker.start()
    modality.request(scp_port, clinic.ae_title, _references(stored_ct_study), keep_open=True)
    worker.join()

    [(event_type, info, _)] = modality.reports
    assert event_type == 1
    assert _committed(info) == set(stored_ct_study.sop_uids)


def test_marked_replicated_but_missing_from_the_replica_is_pending(clinic, stored_ct_study):
    instance = Instance.objects.get(sop_instance_uid=stored_ct_study.sop_uids[0])
    stores.get_store("replica").delete(instance.object_key)

    result = commitment_check(clinic=clinic, references=_references(stored_ct_study))

    assert result.pending == [_references(stored_ct_study)[0]]
    assert result.committed == [_references(stored_ct_study)[1]]


def test_wrong_sop_class_is_a_class_instance_conflict(clinic, stored_ct_study):
    wrong = [("1.2.840.10008.5.1.4.1.1.4", stored_ct_study.sop_uids[0])]

    result = commitment_check(clinic=clinic, references=wrong)

    assert result.failed == [("1.2.840.10008.5.1.4.1.1.4", stored_ct_study.sop_uids[0], CLASS_INSTANCE_CONFLICT)]

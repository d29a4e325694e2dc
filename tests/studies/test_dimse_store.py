"""C-STORE into the clinic's archive, from DCMTK storescu and from pynetdicom, with every status."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE

from studies.archive.objects import object_open
from studies.models import Instance, Study
from tests.dicom_files import write_study
from tests.studies.dimse_support import HOST, MODALITY_AE, SAMPLES, dataset_bytes, dcmtk, store_with_pynetdicom

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("tasks_run_inline")]


def archived_bytes(instance: Instance) -> bytes:
    """Decrypt an archived instance and return its data set bytes (after the file meta group)."""
    with object_open(clinic=instance.clinic, key=instance.object_key) as source:
        data = source.read()
    tmp = Path(f"/tmp/dimse-archived-{instance.uuid}.dcm")
    try:
        tmp.write_bytes(data)
        return dataset_bytes(tmp)
    finally:
        tmp.unlink()


def test_storescu_stores_a_study_into_the_archive(clinic, scp_port, tmp_path):
    study = write_study(tmp_path, samples=["CT_small.dcm", "MR_small_implicit.dcm"], copies=2)

    result = dcmtk("storescu", "-aet", MODALITY_AE, "-aec", clinic.ae_title, HOST, scp_port, *study.files)

    assert result.returncode == 0, result.stderr
    stored = Study.objects.for_clinic(clinic).get()
    assert stored.study_instance_uid == study.study_uid
    assert stored.number_of_instances == 4
    assert stored.number_of_series == 2
    instances = {i.sop_instance_uid: i for i in Instance.objects.for_clinic(clinic)}
    for path, sop_uid in zip(study.files, study.sop_uids, strict=True):
        assert archived_bytes(instances[sop_uid]) == dataset_bytes(path)


def test_pynetdicom_stores_every_common_transfer_syntax(clinic, scp_port, tmp_path):
    study = write_study(tmp_path, samples=list(SAMPLES))

    statuses = store_with_pynetdicom(scp_port, clinic.ae_title, study.files)

    assert statuses == [0x0000] * len(SAMPLES)
    stored = {i.sop_instance_uid: i for i in Instance.objects.for_clinic(clinic)}
    assert {stored[uid].transfer_syntax_uid for uid in study.sop_uids} == set(SAMPLES.values())
    for path, sop_uid in zip(study.files, study.sop_uids, strict=True):
        assert archived_bytes(stored[sop_uid]) == dataset_bytes(path)


def test_storing_the_same_instance_again_is_success_and_stores_nothing_new(clinic, scp_port, tmp_path):
    study = write_study(tmp_path)
    store_with_pynetdicom(scp_port, clinic.ae_title, study.files)
    used_before = type(clinic).objects.get(pk=clinic.pk).used_bytes

    statuses = store_with_pynetdicom(scp_port, clinic.ae_title, study.files)

    assert statuses == [0x0000]
    assert Instance.objects.for_clinic(clinic).count() == 1
    assert type(clinic).objects.get(pk=clinic.pk).used_bytes == used_before


def test_conflicting_instance_is_refused_as_duplicate_and_the_first_kept(clinic, scp_port, tmp_path):
    study = write_study(tmp_path)
    store_with_pynetdicom(scp_port, clinic.ae_title, study.files)
    original = Instance.objects.for_clinic(clinic).get()
    changed = dcmread(study.files[0])
    changed.StudyDescription = "SOMETHING ELSE"
    changed_path = tmp_path / "changed.dcm"
    changed.save_as(changed_path, enforce_file_format=True)

    statuses = store_with_pynetdicom(scp_port, clinic.ae_title, [changed_path])

    assert statuses == [0x0111]
    assert Instance.objects.for_clinic(clinic).get().sha256 == original.sha256


def test_store_over_quota_answers_out_of_resources_and_stores_nothing(clinic, scp_port, tmp_path):
    type(clinic).objects.filter(pk=clinic.pk).update(quota_bytes=1000, used_bytes=0)
    study = write_study(tmp_path)

    result = dcmtk("storescu", "-v", "-aet", MODALITY_AE, "-aec", clinic.ae_title, HOST, scp_port, *study.files)

    assert "Received Store Response (Refused: OutOfResources)" in result.stdout + result.stderr
    assert not Instance.objects.for_clinic(clinic).exists()
    assert type(clinic).objects.get(pk=clinic.pk).used_bytes == 0


def test_store_of_a_dataset_without_study_uid_answers_cannot_understand(clinic, scp_port, tmp_path):
    study = write_study(tmp_path)
    broken = dcmread(study.files[0])
    del broken.StudyInstanceUID
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(broken.SOPClassUID, [broken.file_meta.TransferSyntaxUID])
    assoc = ae.associate(HOST, scp_port, ae_title=clinic.ae_title)

    status = assoc.send_c_store(broken)
    assoc.release()

    assert status.Status == 0xC000
    assert status.ErrorComment
    assert not Instance.objects.for_clinic(clinic).exists()


def test_store_goes_only_to_the_called_clinic(clinic, other_clinic, scp_port, tmp_path):
    study = write_study(tmp_path)

    store_with_pynetdicom(scp_port, clinic.ae_title, study.files)

    assert Instance.objects.for_clinic(clinic).count() == 1
    assert not Instance.objects.for_clinic(other_clinic).exists()


def test_simultaneous_associations_store_one_study_completely(clinic, scp_port, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    study = write_study(tmp_path, samples=["CT_small.dcm", "MR_small_implicit.dcm"], copies=4)
    batches = [study.files[i::4] for i in range(4)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(lambda batch: store_with_pynetdicom(scp_port, clinic.ae_title, batch), batches))

    assert statuses == [[0x0000, 0x0000]] * 4
    stored = Study.objects.for_clinic(clinic).get()
    assert (stored.number_of_series, stored.number_of_instances) == (2, 8)
    assert Instance.objects.for_clinic(clinic).count() == 8


def test_the_senders_preferred_transfer_syntax_is_accepted(clinic, scp_port, tmp_path):
    study = write_study(tmp_path, samples=["SC_rgb_jpeg_dcmtk.dcm"])
    ae = AE(ae_title=MODALITY_AE)
    # A sender holding JPEG images offers them as they are first, uncompressed as a fallback.
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.7", ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1"])
    assoc = ae.associate(HOST, scp_port, ae_title=clinic.ae_title)

    accepted = assoc.accepted_contexts[0].transfer_syntax[0]
    status = assoc.send_c_store(study.files[0])
    assoc.release()

    assert accepted == "1.2.840.10008.1.2.4.50"
    assert status.Status == 0x0000
    instance = Instance.objects.for_clinic(clinic).get()
    assert instance.transfer_syntax_uid == "1.2.840.10008.1.2.4.50"
    assert archived_bytes(instance) == dataset_bytes(study.files[0])


@pytest.mark.parametrize(
    ("compressor", "propose", "transfer_syntax"),
    [
        (["dcmcjpeg", "+e1"], "-xs", "1.2.840.10008.1.2.4.70"),  # JPEG lossless, first-order prediction
        (["dcmcjpls", "+el"], "-xt", "1.2.840.10008.1.2.4.80"),  # JPEG-LS lossless
        (["dcmcrle"], "-xr", "1.2.840.10008.1.2.5"),  # RLE lossless
    ],
)
def test_storescu_sends_compressed_instances_as_they_are(clinic, scp_port, tmp_path, compressor, propose,
                                                          transfer_syntax):
    study = write_study(tmp_path / "plain")
    compressed = tmp_path / "compressed.dcm"
    dcmtk(*compressor, study.files[0], compressed, check=True)

    dcmtk("storescu", propose, "-aet", MODALITY_AE, "-aec", clinic.ae_title, HOST, scp_port, compressed, check=True)

    instance = Instance.objects.for_clinic(clinic).get()
    assert instance.transfer_syntax_uid == transfer_syntax
    assert archived_bytes(instance) == dataset_bytes(compressed)


def test_c_store_of_a_study_uid_held_by_another_patient_fails_with_c410_and_is_held(clinic, scp_port, tmp_path):
    from studies.models import QuarantinedInstance
    from tests.dicom_files import write_ct

    first = write_ct(tmp_path / "a.dcm", patient_id="PAT-A", patient_name="Alpha^Ann")
    study_uid = dcmread(first).StudyInstanceUID
    other = write_ct(tmp_path / "b.dcm", study_uid=study_uid, patient_id="PAT-B", patient_name="Beta^Bob")

    statuses = store_with_pynetdicom(scp_port, clinic.ae_title, [first, other])

    assert statuses == [0x0000, 0xC410]
    assert Instance.objects.for_clinic(clinic).get().series.study.patient.patient_id == "PAT-A"
    assert QuarantinedInstance.objects.for_clinic(clinic).get().patient_id == "PAT-B"


def test_c_store_into_a_trashed_study_brings_it_back(clinic, owner, scp_port, tmp_path):
    from studies.browse import services
    from tests.dicom_files import write_ct

    first = write_ct(tmp_path / "a.dcm")
    store_with_pynetdicom(scp_port, clinic.ae_title, [first])
    study = Study.objects.for_clinic(clinic).get()
    services.study_delete(clinic=clinic, study=study, actor=owner)

    statuses = store_with_pynetdicom(scp_port, clinic.ae_title, [write_ct(tmp_path / "b.dcm",
                                                                         study_uid=study.study_instance_uid)])

    assert statuses == [0x0000]
    study.refresh_from_db()
    assert study.deleted_at is None and study.number_of_instances == 2


def test_one_association_costs_a_bounded_number_of_statements_per_instance(clinic, tmp_path):
    """Lookups constant over an association (plan, anonymize rule, routing) and the replication mark are not
    repeated per image: after the first image of a series, each C-STORE costs at most a dozen statements."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from studies.dimse import handlers
    from tests.studies.dimse_support import register_node, running_scp

    study = write_study(tmp_path, samples=["CT_small.dcm"], copies=6)
    counts: list[int] = []
    statements: list[list[str]] = []
    real = handlers.handle_store

    def counted(event):  # type: ignore[no-untyped-def]
        with CaptureQueriesContext(connection) as queries:  # the handler thread's own connection
            status = real(event)
        sql = [q["sql"][:60] for q in queries.captured_queries]
        # Up to the index commit: what follows is the replication task these tests run in place (a worker's).
        stored = len(sql) - sql[::-1].index("COMMIT") if "COMMIT" in sql else len(sql)
        counts.append(stored)
        statements.append(sql[:stored])
        return status

    index = [event for event, _ in handlers.HANDLERS].index(handlers.evt.EVT_C_STORE)
    handlers.HANDLERS[index] = (handlers.evt.EVT_C_STORE, counted)
    try:
        register_node(clinic)
        with running_scp() as port:
            statuses = store_with_pynetdicom(port, clinic.ae_title, study.files)
    finally:
        handlers.HANDLERS[index] = (handlers.evt.EVT_C_STORE, real)

    assert statuses == [0x0000] * 6
    assert Study.objects.for_clinic(clinic).get().number_of_instances == 6
    # From the third image (the second looks up the series the first stored, and remembers it): the
    # existing-instance check; BEGIN, quota reserve, study lock (admission), series, instance insert, two
    # counters, COMMIT (18 before; 11 while the quota and the series' study were read before every image).
    assert max(counts[1:]) <= 10 and max(counts[2:]) <= 9, "\n".join([str(counts), *statements[-1]])


def test_a_subscription_lapsing_mid_association_refuses_the_next_images_within_seconds(
    clinic, tmp_path, monkeypatch
):
    """The plan is looked up once per few seconds per association, never longer: a lapse applies at once."""
    from datetime import timedelta

    from django.utils import timezone

    from billing.models import Subscription, SubscriptionStatus
    from studies.ingest import lookups
    from tests.studies.dimse_support import register_node, running_scp

    monkeypatch.setattr(lookups, "LOOKUP_SECONDS", 0.5)
    study = write_study(tmp_path, samples=["CT_small.dcm"], copies=3)
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(dcmread(study.files[0], stop_before_pixels=True).SOPClassUID)
    register_node(clinic)
    with running_scp() as port:
        assoc = ae.associate(HOST, port, ae_title=clinic.ae_title)
        assert assoc.is_established
        try:
            first = assoc.send_c_store(study.files[0]).Status
            Subscription.objects.filter(clinic=clinic).update(
                status=SubscriptionStatus.CANCELED, read_only_until=timezone.now() + timedelta(days=30)
            )
            time.sleep(0.6)
            later = [assoc.send_c_store(path).Status for path in study.files[1:]]
        finally:
            assoc.release()

    assert first == 0x0000
    assert later == [0xA700, 0xA700]
    assert Instance.objects.for_clinic(clinic).count() == 1

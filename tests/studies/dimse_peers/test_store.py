"""C-STORE of malformed or inconsistent data sets, sent as raw bytes the way a buggy modality would."""

from __future__ import annotations

import pytest
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import CTImageStorage

from studies.models import Instance
from tests.dicom_files import sample_dataset
from tests.studies.dimse_support import encoded, raw_store

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("tasks_run_inline")]


def ct(**attributes):
    ds = sample_dataset("CT_small.dcm", StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), **attributes)
    if "DataSetTrailingPadding" in ds:
        del ds.DataSetTrailingPadding
    return ds


def test_truncated_dataset_is_cannot_understand_and_not_stored(clinic, scp_port, tmp_path):
    ds = ct()
    data = encoded(ds, implicit=False)
    status = raw_store(scp_port, clinic.ae_title, tmp_path, sop_class=CTImageStorage, sop_uid=str(ds.SOPInstanceUID),
                       data=data[: len(data) // 2])
    assert status == 0xC000
    assert not Instance.objects.for_clinic(clinic).exists()


def test_garbage_bytes_are_cannot_understand(clinic, scp_port, tmp_path):
    status = raw_store(scp_port, clinic.ae_title, tmp_path, sop_class=CTImageStorage, sop_uid=generate_uid(),
                       data=b"\x00\x01garbage" * 40)
    assert status == 0xC000
    assert not Instance.objects.for_clinic(clinic).exists()


def test_explicit_bytes_on_an_implicit_context_are_not_stored_as_success(clinic, scp_port, tmp_path):
    ds = ct()
    status = raw_store(scp_port, clinic.ae_title, tmp_path, sop_class=CTImageStorage, sop_uid=str(ds.SOPInstanceUID),
                       data=encoded(ds, implicit=False), syntax=ImplicitVRLittleEndian)
    stored = list(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", flat=True))
    assert (status, stored) in [(0xC000, []), (0x0000, [str(ds.SOPInstanceUID)])]


def test_a_study_uid_held_by_another_clinic_with_another_patient_is_stored_not_held(clinic, other_clinic, scp_port,
                                                                                    tmp_path):
    """0xC410 is about a stored study of another patient *in this clinic*; another clinic's must not show."""
    from studies.ingest import instance_ingest
    from tests.dicom_files import dataset_write
    from tests.studies.dimse_support import store_with_pynetdicom

    study_uid, series_uid = generate_uid(), generate_uid()
    theirs = sample_dataset("CT_small.dcm", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, PatientID="B-1",
                            PatientName="THEIRS^B", PatientBirthDate="19500101")
    instance_ingest(clinic=other_clinic, source_path=str(dataset_write(theirs, tmp_path / "b.dcm")), source="test")
    ours = sample_dataset("CT_small.dcm", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, PatientID="A-1",
                          PatientName="OURS^A", PatientBirthDate="19800101")
    statuses = store_with_pynetdicom(scp_port, clinic.ae_title, [dataset_write(ours, tmp_path / "a.dcm")])
    assert statuses == [0x0000]
    assert Instance.objects.for_clinic(clinic).filter(sop_instance_uid=str(ours.SOPInstanceUID)).exists()


def test_a_sop_instance_uid_another_clinic_holds_with_other_content_is_stored(clinic, other_clinic, scp_port,
                                                                             tmp_path):
    from studies.ingest import instance_ingest
    from tests.dicom_files import dataset_write
    from tests.studies.dimse_support import store_with_pynetdicom

    sop_uid = generate_uid()
    theirs = sample_dataset("CT_small.dcm", sop_uid=sop_uid, StudyInstanceUID=generate_uid(),
                            SeriesInstanceUID=generate_uid(), PatientID="B-1", StudyDescription="THEIRS")
    instance_ingest(clinic=other_clinic, source_path=str(dataset_write(theirs, tmp_path / "b.dcm")), source="test")
    ours = sample_dataset("CT_small.dcm", sop_uid=sop_uid, StudyInstanceUID=generate_uid(),
                          SeriesInstanceUID=generate_uid(), PatientID="A-1", StudyDescription="OURS")
    statuses = store_with_pynetdicom(scp_port, clinic.ae_title, [dataset_write(ours, tmp_path / "a.dcm")])
    assert statuses == [0x0000]
    assert Instance.objects.for_clinic(clinic).filter(sop_instance_uid=sop_uid).exists()

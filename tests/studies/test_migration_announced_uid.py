"""A migration whose source sends a file we refuse (not the announced instance, another patient's): refused and reported.

The C-STOREs of a C-GET (we are their SCP on our own association) and of a C-MOVE (our listener) are answered alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from studies.models import Instance, QuarantinedInstance
from tests.dicom_files import write_study
from tests.factories import ingest_files
from tests.studies.dimse_support import HOST, free_port, identifier, register_node, running_scp

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.usefixtures("tasks_run_inline")]

SOURCE_AE = "OLDPACS"
DATA_SET_DOES_NOT_MATCH = 0xA900
HELD_FOR_REVIEW = 0xC410


class OldArchive:
    """A pynetdicom archive of one study answering C-FIND, C-GET and C-MOVE, whose index and files may disagree.

    ``files`` maps the SOP Instance UID its index lists (and its C-STOREs announce) to the stored file, which
    is sent as it is: an archive whose file holds another instance than its index says sends that one.
    ``answers`` keeps the statuses we gave each announced UID.
    """

    def __init__(self, files: dict[str, Path], *, listener_port: int = 0) -> None:
        self.files = files
        self.listener_port = listener_port
        self.answers: dict[str, list[int]] = {}
        self.port = free_port()
        ae = AE(ae_title=SOURCE_AE)
        for model in (StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelGet,
                      StudyRootQueryRetrieveInformationModelMove):
            ae.add_supported_context(model)
        # C-GET: the requestor takes the SCP role for the sub-operations on its own association.
        ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian, scu_role=False, scp_role=True)
        handlers = [(evt.EVT_C_FIND, self._find), (evt.EVT_C_GET, self._get), (evt.EVT_C_MOVE, self._move)]
        self.server = ae.start_server((HOST, self.port), block=False, evt_handlers=handlers)

    def _find(self, event: evt.Event) -> Iterator[tuple[int, object]]:
        level = event.identifier.QueryRetrieveLevel
        headers = {uid: dcmread(path, stop_before_pixels=True) for uid, path in self.files.items()}
        if level == "STUDY":
            [study_uid] = {str(ds.StudyInstanceUID) for ds in headers.values()}
            yield 0xFF00, identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=study_uid,
                                     NumberOfStudyRelatedInstances=len(headers))
        else:
            for uid, ds in headers.items():
                yield 0xFF00, identifier(QueryRetrieveLevel="IMAGE", StudyInstanceUID=ds.StudyInstanceUID,
                                         SeriesInstanceUID=ds.SeriesInstanceUID, SOPInstanceUID=uid,
                                         SOPClassUID=ds.SOPClassUID)
        yield 0x0000, None

    def _asked(self, event: evt.Event) -> list[str]:
        if event.identifier.QueryRetrieveLevel != "IMAGE":
            return list(self.files)
        asked = event.identifier.SOPInstanceUID
        # One UID is a str; several, a MultiValue.
        return [str(asked)] if isinstance(asked, str) else [str(uid) for uid in asked]

    def _send(self, assoc: Association, uids: list[str], first_message_id: int) -> None:
        previous = _config.STORE_SEND_CHUNKED_DATASET
        # Streamed from the file, the C-STORE announces its File Meta's UID, not the data set's.
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            for number, uid in enumerate(uids):
                status = assoc.send_c_store(self.files[uid], msg_id=first_message_id + number)
                self.answers.setdefault(uid, []).append(int(status.Status))
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = previous

    def _get(self, event: evt.Event) -> Iterator[object]:
        self._send(event.assoc, self._asked(event), first_message_id=int(event.request.MessageID) + 1)
        # Sent above, outside pynetdicom's count: nothing left for it to send.
        yield 0

    def _move(self, event: evt.Event) -> Iterator[object]:
        ae = AE(ae_title=SOURCE_AE)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate(HOST, self.listener_port, ae_title=event.move_destination)
        assert assoc.is_established
        try:
            self._send(assoc, self._asked(event), first_message_id=1)
        finally:
            assoc.release()
        yield HOST, self.listener_port
        yield 0

    def close(self) -> None:
        self.server.shutdown()


@contextlib.contextmanager
def old_archive(files: dict[str, Path], *, listener_port: int = 0) -> Iterator[OldArchive]:
    archive = OldArchive(files, listener_port=listener_port)
    try:
        yield archive
    finally:
        archive.close()


def _study_with_a_wrong_file(tmp_path: Path) -> tuple[dict[str, Path], str]:
    """Three CT instances of one study; the file stored for the third holds another SOP Instance UID.

    Return the archive's files by listed UID, and the UID the wrong file really holds.
    """
    study = write_study(tmp_path / "study", copies=3)
    files = dict(zip(study.sop_uids, study.files, strict=True))
    listed_uid = study.sop_uids[2]
    wrong = dcmread(files[listed_uid])
    wrong.SOPInstanceUID = generate_uid()
    # File Meta still names the listed instance: the announced UID is the index's, the data set another.
    assert wrong.file_meta.MediaStorageSOPInstanceUID == listed_uid
    wrong_path = tmp_path / "wrong.dcm"
    wrong.save_as(wrong_path)
    files[listed_uid] = wrong_path
    return files, str(wrong.SOPInstanceUID)


def _migrate(client, clinic, **body):
    response = client.post(f"/api/v1/clinics/{clinic.slug}/migrations/", body, content_type="application/json")
    assert response.status_code == HTTPStatus.ACCEPTED, response.content
    return client.get(f"/api/v1/clinics/{clinic.slug}/migrations/{response.json()['id']}/").json()


def test_a_c_get_migration_refuses_a_file_that_is_not_the_announced_instance(client, clinic, admin, tmp_path):
    files, wrong_uid = _study_with_a_wrong_file(tmp_path)
    good_uids, [announced_uid] = list(files)[:2], list(files)[2:]
    client.force_login(admin)

    with old_archive(files) as archive:
        register_node(clinic, ae_title=SOURCE_AE, port=archive.port)
        report = _migrate(client, clinic, node=SOURCE_AE, method="C-GET")

    assert set(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", flat=True)) == set(good_uids)
    assert not Instance.objects.for_clinic(clinic).filter(sop_instance_uid=wrong_uid).exists()
    assert {uid: answers[0] for uid, answers in archive.answers.items()} == {
        good_uids[0]: 0x0000, good_uids[1]: 0x0000, announced_uid: DATA_SET_DOES_NOT_MATCH}
    # Asked once: the old archive would send the same wrong file again.
    assert archive.answers[announced_uid] == [DATA_SET_DOES_NOT_MATCH]
    assert (report["status"], report["instances_done"], report["instances_failed"], report["missing"]) == (
        "failed", 2, 1, [announced_uid])
    assert "Affected SOP Instance UID" in report["refused"][announced_uid]


def test_a_c_move_migration_refuses_a_file_that_is_not_the_announced_instance(client, clinic, admin, tmp_path):
    files, wrong_uid = _study_with_a_wrong_file(tmp_path)
    good_uids, [announced_uid] = list(files)[:2], list(files)[2:]
    client.force_login(admin)

    with running_scp() as listener_port, old_archive(files, listener_port=listener_port) as archive:
        register_node(clinic, ae_title=SOURCE_AE, port=archive.port)
        report = _migrate(client, clinic, node=SOURCE_AE, method="C-MOVE")

    assert set(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", flat=True)) == set(good_uids)
    assert not Instance.objects.for_clinic(clinic).filter(sop_instance_uid=wrong_uid).exists()
    assert set(archive.answers[announced_uid]) == {DATA_SET_DOES_NOT_MATCH}
    assert (report["status"], report["instances_done"], report["instances_failed"], report["missing"]) == (
        "failed", 2, 1, [announced_uid])


@pytest.mark.parametrize("method", ["C-GET", "C-MOVE"])
def test_a_file_of_another_patient_is_answered_held_for_review_whichever_side_opens_the_association(
    client, clinic, admin, tmp_path, method
):
    study = write_study(tmp_path / "study", copies=2)
    ingest_files(clinic=clinic, paths=[study.files[0]])
    # The source's second file names the stored study, but another patient: it is held, never filed under ours.
    other_patient = dcmread(study.files[1])
    other_patient.PatientID = "SOMEONE-ELSE"
    other_patient.save_as(tmp_path / "other.dcm")
    held_uid = study.sop_uids[1]
    client.force_login(admin)

    with running_scp() as listener_port, old_archive({study.sop_uids[0]: study.files[0],
                                                      held_uid: tmp_path / "other.dcm"},
                                                     listener_port=listener_port) as archive:
        register_node(clinic, ae_title=SOURCE_AE, port=archive.port)
        report = _migrate(client, clinic, node=SOURCE_AE, method=method)

    assert set(archive.answers[held_uid]) == {HELD_FOR_REVIEW}
    assert QuarantinedInstance.objects.for_clinic(clinic).get().sop_instance_uid == held_uid
    assert not Instance.objects.for_clinic(clinic).filter(sop_instance_uid=held_uid).exists()
    assert (report["status"], report["missing"]) == ("failed", [held_uid])
    if method == "C-GET":
        # Our own association's answers are the job's: the reason is reported, and it is not asked again.
        assert report["refused"] == {held_uid: "Held for review: patient differs from the study's"}
        assert len(archive.answers[held_uid]) == 1

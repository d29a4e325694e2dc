"""C-STORE group commit: what several associations send at the same moment is ingested as one batch.

Each C-STORE keeps its own exact status; an instance is answered only once its batch is committed; the
batch is made of whatever the node's associations hand in at once (studies.ingest.group).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db.models import Sum
from pydicom import dcmread

from studies.archive import stores
from studies.archive.errors import StorageUnavailable
from studies.dimse import handlers
from studies.errors import InvalidDicom
from studies.ingest import ItemResult, group
from studies.models import Instance, Series, Study
from tests.dicom_files import write_study
from tests.studies.dimse_support import store_with_pynetdicom

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("tasks_run_inline")]


@pytest.fixture
def batches(monkeypatch) -> list[list[ItemResult]]:
    """What became of each batch the listener ingested; a long linger so two associations always meet."""
    seen: list[list[ItemResult]] = []
    real = handlers._ingest_batch

    def recording(paths, **kwargs):  # type: ignore[no-untyped-def]
        results = real(paths, **kwargs)
        seen.append(results)
        return results

    monkeypatch.setattr(handlers, "_ingest_batch", recording)
    monkeypatch.setattr(group, "GROUP_LINGER_SECONDS", 0.5)
    return seen


def _send_together(port: int, called: str, streams: list[list[Path]]) -> list[list[int]]:
    with ThreadPoolExecutor(max_workers=len(streams)) as pool:
        return list(pool.map(lambda files: store_with_pynetdicom(port, called, files), streams))


def _used_bytes(clinic) -> int:  # type: ignore[no-untyped-def]
    return type(clinic).objects.get(pk=clinic.pk).used_bytes


def _indexed_bytes(clinic) -> int:  # type: ignore[no-untyped-def]
    return Instance.objects.for_clinic(clinic).aggregate(total=Sum("size_bytes"))["total"] or 0


def test_many_instances_on_two_associations_are_all_stored_with_exact_statuses_and_counters(
    clinic, scp_port, tmp_path, batches
):
    study = write_study(tmp_path, samples=["CT_small.dcm", "MR_small_implicit.dcm"], copies=8)
    streams = [study.files[0::2], study.files[1::2]]

    statuses = _send_together(scp_port, clinic.ae_title, streams)

    assert statuses == [[0x0000] * 8, [0x0000] * 8]
    stored = Study.objects.for_clinic(clinic).get()
    assert (stored.number_of_series, stored.number_of_instances) == (2, 16)
    assert sorted(Series.objects.for_clinic(clinic).values_list("number_of_instances", flat=True)) == [8, 8]
    assert set(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", flat=True)) == set(study.sop_uids)
    # The quota counts exactly the stored instances (as received: the sender rewrites File Meta).
    assert _used_bytes(clinic) == _indexed_bytes(clinic) > 0
    # The two associations' images went in together, not one by one.
    assert sum(len(b) for b in batches) == 16
    assert max(len(b) for b in batches) > 1


def test_a_bad_instance_in_a_group_fails_alone(clinic, scp_port, tmp_path, batches):
    study = write_study(tmp_path, samples=["CT_small.dcm"], copies=16)
    broken = dcmread(study.files[2])
    del broken.StudyInstanceUID
    broken_path = tmp_path / "broken.dcm"
    broken.save_as(broken_path, enforce_file_format=True)
    # The broken file goes half-way through a stream while the other stream still has images to send:
    # placed third of five against four, it once came after the other association had finished (a slow
    # host), and was ingested alone.
    first = [*study.files[0:8:2], broken_path, *study.files[8::2]]
    second = study.files[1::2]

    statuses = _send_together(scp_port, clinic.ae_title, [first, second])

    assert statuses == [[0x0000] * 4 + [0xC000] + [0x0000] * 4, [0x0000] * 8]
    assert Instance.objects.for_clinic(clinic).count() == 16
    assert Study.objects.for_clinic(clinic).get().number_of_instances == 16
    assert _used_bytes(clinic) == _indexed_bytes(clinic) > 0
    [with_broken] = [b for b in batches if any(isinstance(i.error, InvalidDicom) for i in b)]
    assert len(with_broken) > 1


def test_storage_failing_mid_group_leaves_no_index_row_or_quota_for_the_unacknowledged(
    clinic, scp_port, tmp_path, batches, monkeypatch
):
    study = write_study(tmp_path, samples=["CT_small.dcm"], copies=8)
    real_put = stores.LocalStore.put
    writes: list[str] = []

    def flaky_put(self, key, fileobj, **options):  # the storage boundary: the third instance object fails
        if self.name == "primary" and "/objects/" in key:
            writes.append(key)
            if len(writes) == 3:
                raise StorageUnavailable("The primary store did not answer.")
        return real_put(self, key, fileobj, **options)

    monkeypatch.setattr(stores.LocalStore, "put", flaky_put)

    statuses = _send_together(scp_port, clinic.ae_title, [study.files[0::2], study.files[1::2]])

    flat = statuses[0] + statuses[1]
    assert sorted(flat) == [0x0000] * 7 + [0xA700]
    failed_uid = (study.sop_uids[0::2] + study.sop_uids[1::2])[flat.index(0xA700)]
    stored_uids = set(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", flat=True))
    assert stored_uids == set(study.sop_uids) - {failed_uid}
    assert Study.objects.for_clinic(clinic).get().number_of_instances == 7
    assert _used_bytes(clinic) == _indexed_bytes(clinic) > 0
    assert not stores.get_store("primary").exists(writes[2])
    assert max(len(b) for b in batches) > 1


def test_a_full_quota_refuses_only_the_instances_of_a_group_that_do_not_fit(clinic, scp_port, tmp_path, batches):
    study = write_study(tmp_path, samples=["CT_small.dcm"], copies=8)
    size = study.files[0].stat().st_size
    type(clinic).objects.filter(pk=clinic.pk).update(quota_bytes=5 * size + size // 2, used_bytes=0)

    statuses = _send_together(scp_port, clinic.ae_title, [study.files[0::2], study.files[1::2]])

    flat = statuses[0] + statuses[1]
    assert sorted(flat) == [0x0000] * 5 + [0xA700] * 3
    assert Instance.objects.for_clinic(clinic).count() == 5
    assert _used_bytes(clinic) == _indexed_bytes(clinic) > 0


def test_a_quota_lowered_elsewhere_mid_association_refuses_the_next_image_at_once(clinic, scp_port, tmp_path):
    """An association far from its quota reuses its last quota reading, but the reservation still decides."""
    from pynetdicom import AE

    from tests.studies.dimse_support import HOST, MODALITY_AE

    study = write_study(tmp_path, samples=["CT_small.dcm"], copies=2)
    type(clinic).objects.filter(pk=clinic.pk).update(quota_bytes=10**12, used_bytes=0)
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(dcmread(study.files[0], stop_before_pixels=True).SOPClassUID)
    assoc = ae.associate(HOST, scp_port, ae_title=clinic.ae_title)
    assert assoc.is_established
    try:
        first = assoc.send_c_store(study.files[0]).Status
        used = _used_bytes(clinic)
        type(clinic).objects.filter(pk=clinic.pk).update(quota_bytes=used)  # another process's change

        second = assoc.send_c_store(study.files[1]).Status
    finally:
        assoc.release()

    assert (first, second) == (0x0000, 0xA700)
    assert Instance.objects.for_clinic(clinic).count() == 1
    assert _used_bytes(clinic) == used == _indexed_bytes(clinic)


def test_a_series_filed_elsewhere_mid_association_refuses_the_next_image_though_the_stream_remembers_it(
    clinic, scp_port, tmp_path
):
    """An association remembers a moment which study a stored series belongs to, but the index decides."""
    from pynetdicom import AE

    from tests.factories import make_study
    from tests.studies.dimse_support import HOST, MODALITY_AE

    study = write_study(tmp_path, samples=["CT_small.dcm"], copies=3)
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(dcmread(study.files[0], stop_before_pixels=True).SOPClassUID)
    assoc = ae.associate(HOST, scp_port, ae_title=clinic.ae_title)
    assert assoc.is_established
    try:
        first = [assoc.send_c_store(path).Status for path in study.files[:2]]
        used = _used_bytes(clinic)
        # Meanwhile the series was erased and stored anew under another study (here: moved by hand).
        Series.objects.for_clinic(clinic).update(study=make_study(clinic=clinic))

        last = assoc.send_c_store(study.files[2]).Status
    finally:
        assoc.release()

    assert (first, last) == ([0x0000, 0x0000], 0xC000)
    assert Instance.objects.for_clinic(clinic).count() == 2
    assert _used_bytes(clinic) == used


def test_a_lone_association_is_never_held_back_waiting_for_others(
    clinic, scp_port, tmp_path, batches, monkeypatch
):
    import time

    monkeypatch.setattr(group, "GROUP_LINGER_SECONDS", 2.0)
    study = write_study(tmp_path, samples=["CT_small.dcm"], copies=3)

    started = time.monotonic()
    statuses = store_with_pynetdicom(scp_port, clinic.ae_title, study.files)
    elapsed = time.monotonic() - started

    assert statuses == [0x0000] * 3
    # Each batch may linger 2 s here for other senders (6 s in all): none lingered.
    assert elapsed < 4
    assert [len(b) for b in batches] == [1, 1, 1]


def test_two_nodes_storing_into_one_study_at_once_keep_its_counters_exact(clinic, scp_port, tmp_path):
    """Separate group commits (as in separate listener processes) meet only in the database."""
    from pynetdicom import AE

    from tests.studies.dimse_support import HOST, register_node

    register_node(clinic, ae_title="MODALITY2")
    study = write_study(tmp_path, samples=["CT_small.dcm", "MR_small_implicit.dcm"], copies=6)

    def send(ae_title: str, files: list[Path]) -> list[int]:
        ae = AE(ae_title=ae_title)
        for path in files:
            ae.add_requested_context(dcmread(path, stop_before_pixels=True).SOPClassUID)
        assoc = ae.associate(HOST, scp_port, ae_title=clinic.ae_title)
        assert assoc.is_established
        try:
            return [assoc.send_c_store(path).Status for path in files]
        finally:
            assoc.release()

    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = [pool.submit(send, ae, study.files[i::4]) for i, ae in enumerate(["MODALITY1", "MODALITY2"] * 2)]
        statuses = [run.result() for run in runs]

    assert statuses == [[0x0000] * 3] * 4
    stored = Study.objects.for_clinic(clinic).get()
    assert (stored.number_of_series, stored.number_of_instances) == (2, 12)
    assert sorted(Series.objects.for_clinic(clinic).values_list("number_of_instances", flat=True)) == [6, 6]
    assert stored.size_bytes == _indexed_bytes(clinic) == _used_bytes(clinic)

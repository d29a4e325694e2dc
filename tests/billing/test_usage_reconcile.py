"""Quota reconcile: used_bytes recomputed from the index; drift corrected and audited, promptly.

A reservation is made only inside the transaction that writes its index rows, so a process killed
between the two leaves nothing behind; usage that no row accounts for (committed by something else) is
corrected by the periodic reconcile and, before it could refuse an upload, by the upload itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from billing import services
from studies.ingest import instance_ingest, quota_reserve
from studies.models import Instance, QuarantinedInstance, Study
from tenants.models import AuditEvent, Clinic
from tests.dicom_files import write_ct, write_series
from tests.factories import ingest_files
from tests.studies.upload_memory_support import ROOT, server_env


@pytest.fixture
def stored(clinic, tmp_path) -> int:
    instances = ingest_files(clinic=clinic, paths=write_series(tmp_path / "s", count=2))
    return sum(instance.size_bytes for instance in instances)


def used(clinic) -> int:
    return Clinic.objects.values_list("used_bytes", flat=True).get(pk=clinic.pk)


def corrections(clinic) -> list[dict]:
    return [e.details for e in AuditEvent.objects.for_clinic(clinic).filter(action="billing.usage_corrected")]


def test_usage_above_the_index_is_corrected_at_once_and_audited(clinic, stored):
    quota_reserve(clinic=clinic, size_bytes=5000)  # committed on its own: nothing will ever index it

    result = services.usage_reconcile(clinic=clinic)

    assert result is not None and result.corrected_by == -5000
    assert used(clinic) == stored
    assert corrections(clinic) == [{"used_bytes_before": stored + 5000, "indexed_bytes": stored,
                                    "corrected_by": -5000, "reason": "periodic reconcile"}]
    assert services.usage_reconcile(clinic=clinic) is None  # nothing left to correct


def test_usage_below_the_index_is_corrected_at_once(clinic, stored):
    Clinic.objects.filter(pk=clinic.pk).update(used_bytes=0)

    result = services.usage_reconcile(clinic=clinic)

    assert result is not None and result.corrected_by == stored
    assert used(clinic) == stored


def test_an_upload_refused_only_because_of_leftover_usage_is_accepted_at_once(clinic, stored, tmp_path):
    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=stored * 3)
    quota_reserve(clinic=clinic, size_bytes=stored * 2)  # leftover usage fills the quota; no reconcile runs

    [instance] = ingest_files(clinic=clinic, paths=write_series(tmp_path / "late", count=1))

    assert used(clinic) == stored + instance.size_bytes
    assert corrections(clinic) == [{"used_bytes_before": stored * 3, "indexed_bytes": stored,
                                    "corrected_by": -stored * 2, "reason": "upload refused"}]


def test_a_really_full_quota_still_refuses_and_corrects_nothing(clinic, stored, tmp_path):
    from studies.errors import QuotaExceeded

    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=stored)

    with pytest.raises(QuotaExceeded):
        ingest_files(clinic=clinic, paths=write_series(tmp_path / "late", count=1))

    assert used(clinic) == stored
    assert corrections(clinic) == []


def test_held_files_keep_their_room_through_the_reconcile(clinic, tmp_path):
    ingest_files(clinic=clinic, paths=[write_ct(tmp_path / "a.dcm", patient_id="PAT-A", patient_name="Alpha^Ann")])
    study = Study.objects.for_clinic(clinic).get()
    other_patient = write_ct(tmp_path / "b.dcm", study_uid=study.study_instance_uid, patient_id="PAT-B",
                             patient_name="Beta^Bob")
    with pytest.raises(Exception, match="Held for review"):
        instance_ingest(clinic=clinic, source_path=str(other_patient))
    held = QuarantinedInstance.objects.for_clinic(clinic).get()
    indexed = Instance.objects.for_clinic(clinic).get().size_bytes

    assert services.usage_reconcile(clinic=clinic) is None
    assert used(clinic) == indexed + held.size_bytes


def test_reconcile_touches_only_the_drifting_clinic(clinic, other_clinic, stored):
    Clinic.objects.filter(pk=clinic.pk).update(used_bytes=0)
    before = used(other_clinic)

    assert services.usage_reconcile_all() == 1

    assert used(other_clinic) == before
    assert not AuditEvent.objects.for_clinic(other_clinic).filter(action="billing.usage_corrected").exists()


# An ingest in its own process, killed (SIGKILL) inside the index transaction: after its reservation and
# its rows were written, before the commit.
KILLED_INGEST = textwrap.dedent("""
    import os, signal, sys
    import django
    django.setup()
    from studies.ingest import hooks, instance_ingest
    from tenants.models import Clinic

    def die(clinic, instances, origin):
        print("reserved and indexed, not committed", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    hooks.indexed_register(die)
    instance_ingest(clinic=Clinic.objects.get(pk=int(sys.argv[1])), source_path=sys.argv[2])
    print("committed", flush=True)
""")


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_a_process_killed_between_reservation_and_commit_never_blocks_the_next_upload(
    clinic, stored, tmp_path, settings
):
    late = write_series(tmp_path / "late", count=1)[0]
    # Room for exactly one more file: a reservation left behind would refuse the next upload.
    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=stored + late.stat().st_size)
    env = {**os.environ, **server_env(settings), "DJANGO_SETTINGS_MODULE": "portal.settings"}

    killed = subprocess.run([sys.executable, "-c", KILLED_INGEST, str(clinic.pk), str(late)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert "reserved and indexed, not committed" in killed.stdout
    assert used(clinic) == stored  # rolled back with the process's transaction
    assert Instance.objects.for_clinic(clinic).count() == 2
    instance = instance_ingest(clinic=clinic, source_path=str(late)).instance
    assert used(clinic) == stored + instance.size_bytes
    assert services.usage_reconcile(clinic=clinic) is None

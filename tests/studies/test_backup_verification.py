"""Verification of replica copies, the per-clinic summary, alerts, the backup page and API."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.core.management import CommandError, call_command
from django.utils import timezone

from studies.backup import replication, verification
from studies.models import Instance, VerificationRun
from tenants import services as tenant_services
from tenants.roles import Role
from tests.dicom_files import write_dicom_files
from tests.factories import ingest_files
from tests.studies.backup_support import (
    backup_cache_clear,  # noqa: F401 - autouse
    local_path,
    stored_bytes,
)


@pytest.fixture
def replicated(clinic, tmp_path):
    instances = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path, count=3))
    for instance in instances:
        replication.instance_replicate(instance=instance)
    return instances


def _flip_a_byte(settings, key: str, offset: int = 200) -> None:
    path = local_path(settings.REPLICA_STORE_URL, key)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_verification_reads_back_every_copy_and_records_it(clinic, replicated):
    run = verification.verification_run(clinic=clinic)
    assert (run.checked, run.failed) == (3, 0)
    assert all(i.replica_verified_at is not None for i in Instance.objects.for_clinic(clinic))
    assert verification.last_full_verification(clinic=clinic) is not None
    # Verified within the interval: nothing is due until then.
    assert verification.verification_run(clinic=clinic).checked == 0
    Instance.objects.for_clinic(clinic).update(replica_verified_at=timezone.now() - timedelta(days=8))
    assert verification.verification_run(clinic=clinic).checked == 3


def test_newest_first_in_batches(clinic, replicated):
    newest = max(replicated, key=lambda i: (i.stored_at, i.pk))
    run = verification.verification_run(limit=1)
    assert run.checked == 1
    newest.refresh_from_db()
    assert newest.replica_verified_at is not None
    assert Instance.objects.for_clinic(clinic).filter(replica_verified_at=None).count() == 2


def test_corrupt_replica_copy_fails_alerts_degrades_and_is_healed(clinic, admin, replicated, settings, client):
    settings.OPERATOR_EMAILS = ["ops@pacs.example"]
    bad = replicated[0]
    _flip_a_byte(settings, bad.object_key)

    run = verification.verification_run()

    assert (run.checked, run.failed) == (3, 1)
    bad.refresh_from_db()
    assert bad.replica_verify_failed_at is not None
    assert len(mail.outbox) == 1
    assert set(mail.outbox[0].to) == {"owner@clinic-a.example", "admin@clinic-a.example", "ops@pacs.example"}
    assert "failed verification" in mail.outbox[0].subject
    body = client.get("/readyz").json()
    assert body["status"] == "degraded" and "backup_verification" in body["degraded"]
    # The bad copy was rewritten from the verified primary copy; the next run clears the failure.
    assert stored_bytes("replica", bad.object_key) == stored_bytes("primary", bad.object_key)
    again = verification.verification_run()
    assert (again.checked, again.failed) == (1, 0)
    bad.refresh_from_db()
    assert bad.replica_verify_failed_at is None
    assert client.get("/readyz").json()["status"] == "ok"


def test_verify_backups_command(clinic, replicated, settings, capsys):
    call_command("verify_backups", "--clinic", clinic.slug)
    assert "Checked 3 replica copies, 0 failed." in capsys.readouterr().out
    _flip_a_byte(settings, replicated[1].object_key, offset=10)  # in the header this time
    with pytest.raises(CommandError, match="1 replica copies failed"):
        call_command("verify_backups", "--all")
    assert VerificationRun.objects.filter(source="command").count() == 2


def test_missing_replica_copy_is_a_failure(clinic, replicated, settings):
    local_path(settings.REPLICA_STORE_URL, replicated[2].object_key).unlink()
    run = verification.verification_run()
    assert run.failed == 1


# --- page and API -----------------------------------------------------------------------------


def test_backup_page_shows_the_numbers(client, clinic, admin, replicated, tmp_path):
    ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path / "more", count=1))  # one pending
    verification.verification_run(clinic=clinic)
    client.force_login(admin)
    response = client.get(f"/c/{clinic.slug}/backup/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="backup-instances">4<' in html
    assert 'id="backup-replicated">3<' in html
    assert 'id="backup-pending">1<' in html
    assert "95th percentile" in html


@pytest.mark.parametrize("role", [Role.CLINICIAN, Role.UPLOADER, Role.BILLING])
def test_backup_page_needs_manage_right(client, clinic, role, request):
    user = request.getfixturevalue({Role.CLINICIAN: "clinician", Role.UPLOADER: "uploader",
                                    Role.BILLING: "billing_admin"}[role])
    client.force_login(user)
    assert client.get(f"/c/{clinic.slug}/backup/").status_code == 403
    assert client.get(f"/api/v1/clinics/{clinic.slug}/backup/").status_code == 403


def test_outsider_gets_404(client, clinic, outsider):
    client.force_login(outsider)
    assert client.get(f"/c/{clinic.slug}/backup/").status_code == 404
    assert client.get(f"/api/v1/clinics/{clinic.slug}/backup/").status_code == 404


def test_backup_api_with_token(client, clinic, replicated, tmp_path, settings):
    verification.verification_run(clinic=clinic)
    pending = ingest_files(clinic=clinic, paths=write_dicom_files(tmp_path / "more", count=1))[0]
    Instance.objects.filter(pk=pending.pk).update(stored_at=timezone.now() - timedelta(seconds=90))
    _flip_a_byte(settings, replicated[0].object_key)
    Instance.objects.filter(pk=replicated[0].pk).update(replica_verified_at=None)
    verification.verification_run(clinic=clinic)
    token = tenant_services.api_token_create(clinic=clinic, name="monitoring", role=Role.ADMIN).secret
    response = client.get(f"/api/v1/clinics/{clinic.slug}/backup/", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    body = response.json()
    assert body["instances"] == 4
    assert body["replicated"] == 3
    assert body["pending"] == 1
    assert 85 <= body["oldest_pending_seconds"] <= 150
    assert body["failures"] == 1  # rewritten from primary, counted until the next run confirms it
    assert body["last_verified_at"] is None  # the failed copy has no successful verification yet
    assert body["lag_p95_seconds"] is not None
    assert body["replication_mode"] == "async"

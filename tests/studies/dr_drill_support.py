"""The two halves of the disaster drill, run as their own processes against the drill's environment.

``python -m tests.studies.dr_drill_support prepare STATE.json`` builds a clinic's service (users, a token,
a share link, studies, one in the trash, audit entries), backs the database up, then keeps working
after that backup (more images acknowledged, a study trashed): what a real clinic does between two
snapshots. It records what was acknowledged in STATE.json. ``... check STATE.json`` runs after README's
recovery commands and prints a JSON report of what came back.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import django


def _setup() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    django.setup()


def _dicom_files(folder: Path, *, count: int, study_uid: str | None = None) -> list[Path]:
    from tests.dicom_files import write_series

    return write_series(folder, count=count, study_uid=study_uid, patient_id="DR-1")


def prepare(state_path: Path) -> None:
    _setup()
    from django.core.management import call_command

    from studies.browse import services as study_services
    from studies.ingest import instance_ingest
    from studies.models import Instance, Study
    from studies.sharing import services as sharing
    from tenants import services as tenant_services
    from tenants.audit import audit_record
    from tenants.models import AuditEvent, User
    from tenants.roles import Role

    work = state_path.parent / "incoming"
    call_command("create_clinic", name="Clinic DR", slug="dr", owner="owner@dr.example", password="Owner-pass-1234")
    from tenants.models import Clinic

    clinic = Clinic.objects.get(slug="dr")
    owner = User.objects.get(email="owner@dr.example")
    token = tenant_services.api_token_create(clinic=clinic, name="pacs bridge", role=Role.CLINICIAN).secret

    def ingest(paths: list[Path]) -> None:
        for path in paths:
            instance_ingest(clinic=clinic, source_path=str(path))

    ingest(_dicom_files(work / "a", count=3))
    ingest(_dicom_files(work / "b", count=2))
    ingest(_dicom_files(work / "c", count=2))
    shared, trashed_before, trashed_after = list(Study.objects.for_clinic(clinic).order_by("pk"))
    share = sharing.share_create(clinic=clinic, studies=[shared], created_by=owner, expires_in_days=30)
    study_services.study_delete(clinic=clinic, study=trashed_before, actor=owner)
    audit_record(clinic=clinic, action="member.role_changed", actor=owner)

    call_command("backup_database")  # the last snapshot before the disaster
    audit_at_snapshot = sorted([e.sequence, e.hash] for e in AuditEvent.objects.for_clinic(clinic))

    # Still working after that snapshot: these images are acknowledged and replicated, this study trashed.
    ingest(_dicom_files(work / "d", count=2))
    ingest(_dicom_files(work / "e", count=1, study_uid=shared.study_instance_uid))
    study_services.study_delete(clinic=clinic, study=trashed_after, actor=owner)
    from studies.backup import database

    database.audit_anchor_write(force=True)  # the per-minute beat task's anchor

    state = {
        "clinic": str(clinic.uuid),
        "slug": clinic.slug,
        "owner": ["owner@dr.example", "Owner-pass-1234"],
        "token": token,
        "share_token": share.token,
        "instances": sorted(
            [i.sop_instance_uid, i.sha256, i.size_bytes] for i in Instance.objects.for_clinic(clinic)
        ),
        "unreplicated": Instance.objects.for_clinic(clinic).filter(replicated_at__isnull=True).count(),
        "trashed": sorted([trashed_before.study_instance_uid, trashed_after.study_instance_uid]),
        "live": sorted(
            Study.objects.for_clinic(clinic).filter(deleted_at__isnull=True).values_list("study_instance_uid", flat=True)
        ),
        "audit_at_snapshot": audit_at_snapshot,
        "used_bytes": Clinic.objects.values_list("used_bytes", flat=True).get(pk=clinic.pk),
    }
    state_path.write_text(json.dumps(state))


def check(state_path: Path) -> None:
    _setup()
    from django.test import Client

    from studies.models import Instance, Study
    from tenants.audit import audit_chains_verify
    from tenants.models import AuditEvent, Clinic, User

    state = json.loads(state_path.read_text())
    clinic = Clinic.objects.get(uuid=state["clinic"])
    email, password = state["owner"]
    client = Client(HTTP_HOST="localhost")
    api = client.get(f"/api/v1/clinics/{clinic.slug}/studies/", HTTP_AUTHORIZATION=f"Bearer {state['token']}")
    share = client.get(f"/s/{state['share_token']}/")
    # A leading wildcard goes through SQLite's trigram index (kept by triggers that a table rebuild drops).
    found = client.get(f"/dicomweb/{clinic.slug}/studies", {"PatientName": "*CHARD"},
                       HTTP_AUTHORIZATION=f"Bearer {state['token']}")
    report = {
        "instances": sorted(
            [i.sop_instance_uid, i.sha256, i.size_bytes] for i in Instance.objects.for_clinic(clinic)
        ),
        "owner_signs_in": User.objects.get(email=email).check_password(password),
        "token_status": api.status_code,
        "share_status": share.status_code,
        "found_by_wildcard": sorted(
            study["0020000D"]["Value"][0] for study in (found.json() if found.status_code == 200 else [])
        ),
        "trashed": sorted(
            Study.objects.for_clinic(clinic).filter(deleted_at__isnull=False).values_list("study_instance_uid", flat=True)
        ),
        "live": sorted(
            Study.objects.for_clinic(clinic).filter(deleted_at__isnull=True).values_list("study_instance_uid", flat=True)
        ),
        "audit": sorted([e.sequence, e.hash] for e in AuditEvent.objects.for_clinic(clinic)),
        "audit_problems": [p.problem for p in audit_chains_verify().problems],
        "used_bytes": Clinic.objects.values_list("used_bytes", flat=True).get(pk=clinic.pk),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    {"prepare": prepare, "check": check}[sys.argv[1]](Path(sys.argv[2]))

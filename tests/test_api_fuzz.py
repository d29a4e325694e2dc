"""Schema-driven fuzzing of the REST API: no operation under /api/v1/ answers with a server error.

Schemathesis loads the OpenAPI schema from the app itself (``/api/v1/schema/``), generates valid and
invalid requests for every operation and sends them in-process to the WSGI app, as the owner-role API
token of a clinic holding a few real studies (pydicom's sample files, stored through ingest). Path
parameters name that clinic, and study UIDs in paths and bodies are often real ones, so that requests
reach the views rather than stopping at a 404.

Examples per operation are bounded (``API_FUZZ_MAX_EXAMPLES``) and the seed is fixed, so a CI run is
repeatable; set ``API_FUZZ_SEED`` to explore other inputs locally.
"""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error

from portal.wsgi import application
from studies import ingest
from studies.anonymize import services as anonymize_services
from studies.anonymize.models import AnonymizationJob
from studies.models import Study, UploadBatch
from studies.sharing import services as sharing_services
from studies.sharing.models import Share
from tenants import services as tenant_services
from tenants.models import ApiToken, Invitation, User
from tenants.roles import Role
from tests.dicom_files import EDGE_DIR
from tests.factories import make_clinic, make_member

CLINIC_SLUG = "fuzz-clinic"
MAX_EXAMPLES = int(os.environ.get("API_FUZZ_MAX_EXAMPLES", "30"))
SEED = int(os.environ.get("API_FUZZ_SEED", "20261127"))
SAMPLE_FILES = [
    EDGE_DIR / "pydicom-test-files" / name
    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm")
]
# Objects of the fuzzed clinic get these ids, so that path parameters can name real ones.
MEMBER_UUID = "0f0e0d0c-0000-4000-8000-000000000001"
TOKEN_UUID = "0f0e0d0c-0000-4000-8000-000000000002"
INVITATION_UUID = "0f0e0d0c-0000-4000-8000-000000000003"
SHARE_UUID = "0f0e0d0c-0000-4000-8000-000000000004"
JOB_UUID = "0f0e0d0c-0000-4000-8000-000000000005"
BATCH_UUID = "0f0e0d0c-0000-4000-8000-000000000006"


def _study_uids(paths: list[Path]) -> list[str]:
    return sorted({str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID) for path in paths})


STUDY_UIDS = _study_uids(SAMPLE_FILES)


def _real_half_the_time(dictionary: str) -> dict[str, object]:
    return {"dictionary": dictionary, "probability": 0.5}


config = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "parameters": {
            "path.clinic_slug": CLINIC_SLUG,
            # Half the time a real object, so detail, change and delete requests get past the 404.
            "path.study_uid": _real_half_the_time("studies"),
            "body.studies[*]": _real_half_the_time("studies"),
            "path.user_uuid": _real_half_the_time("members"),
            "path.token_uuid": _real_half_the_time("tokens"),
            "path.invitation_uuid": _real_half_the_time("invitations"),
            "path.share_id": _real_half_the_time("shares"),
            "path.job_id": _real_half_the_time("jobs"),
            "path.batch_id": _real_half_the_time("batches"),
        },
        "dictionaries": {
            "studies": {"values": STUDY_UIDS},
            "members": {"values": [MEMBER_UUID]},
            "tokens": {"values": [TOKEN_UUID]},
            "invitations": {"values": [INVITATION_UUID]},
            "shares": {"values": [SHARE_UUID]},
            "jobs": {"values": [JOB_UUID]},
            "batches": {"values": [BATCH_UUID]},
        },
        # No example database: a run depends on the seed alone and leaves no .hypothesis/ folder behind.
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
        # Coverage adds boundary values and unexpected methods; examples come from the schema itself.
        "phases": {"stateful": {"enabled": False}},
    }
)
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", application, config=config)


@schema.hook
def map_body(context: schemathesis.HookContext, body: object) -> object:
    """Make half the uploads a real DICOM file, so that the upload endpoint also reaches ingest."""
    if context.operation is None or not context.operation.path.endswith("/uploads/"):
        return body
    if isinstance(body, dict) and isinstance(body.get("file"), (bytes, str)) and len(body["file"]) % 2:
        body = {**body, "file": SAMPLE_FILES[len(body["file"]) % len(SAMPLE_FILES)].read_bytes()}
    return body


@pytest.fixture
def _keep_the_test_connection():
    """Keep Django from closing the database connection after each request, as its test client does.

    Requests go through the real WSGI handler, whose request_started/finished signals would otherwise
    close the connection that holds the test's transaction.
    """
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def owner_token(db, _keep_the_test_connection) -> str:
    """Return the secret of an owner-role API token of a clinic holding the sample studies.

    The clinic also has a member, a second token, an invitation, a share, an anonymization job and an
    uploaded archive, each with a known id.
    """
    clinic = make_clinic(slug=CLINIC_SLUG)
    for path in SAMPLE_FILES:
        ingest.instance_ingest(clinic=clinic, source_path=str(path), source="upload")
    studies = list(Study.objects.for_clinic(clinic))
    member = make_member(clinic=clinic, role=Role.CLINICIAN)
    User.objects.filter(pk=member.pk).update(uuid=MEMBER_UUID)
    token = tenant_services.api_token_create(clinic=clinic, name="viewer", role=Role.CLINICIAN).token
    ApiToken.objects.filter(pk=token.pk).update(uuid=TOKEN_UUID)
    invitation = tenant_services.invitation_create(
        clinic=clinic, email="invited@example.org", role=Role.CLINICIAN, invited_by=None, base_url="http://testserver/"
    ).invitation
    Invitation.objects.filter(pk=invitation.pk).update(uuid=INVITATION_UUID)
    share = sharing_services.share_create(clinic=clinic, studies=studies[:1], created_by=None).share
    Share.objects.filter(pk=share.pk).update(uuid=SHARE_UUID)
    project = anonymize_services.project_get_or_create(clinic=clinic, name="Fuzz")
    job = anonymize_services.job_create(clinic=clinic, project=project, studies=studies[:1])
    AnonymizationJob.objects.filter(pk=job.pk).update(uuid=JOB_UUID)
    UploadBatch.objects.create(clinic=clinic, uuid=BATCH_UUID, archive_name="cd.zip")
    return tenant_services.api_token_create(clinic=clinic, name="fuzz", role=Role.OWNER).secret


@pytest.mark.slow
@schema.include(path_regex=r"^/api/v1/").parametrize()
@hypothesis_settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_operation_answers_no_server_error(case, owner_token):
    # Every example starts from the fixture's data, and a failed statement cannot poison the next ones.
    savepoint = transaction.savepoint()
    try:
        case.call_and_validate(headers={"Authorization": f"Bearer {owner_token}"}, checks=[not_a_server_error])
    finally:
        transaction.savepoint_rollback(savepoint)

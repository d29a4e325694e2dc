"""Services take an ``Actor`` (who acts, from where), built by the view from its request, never the request."""

from __future__ import annotations

import ast
from pathlib import Path

from django.test import RequestFactory

from studies.browse import services as browse_services
from tenants.audit import Actor, audit_record
from tenants.models import AuditEvent
from tenants.services import api_token_create
from tests.factories import make_study

ROOT = Path(__file__).resolve().parents[2]
# Modules holding services (state changes): they are called by views, APIs, tasks and commands alike.
SERVICE_MODULES = [
    *sorted((ROOT / "studies").glob("**/services.py")),
    ROOT / "studies" / "admission.py",
    ROOT / "studies" / "ingest" / "uploads.py",
    ROOT / "studies" / "erasure.py",
    ROOT / "studies" / "dimse" / "nodes.py",
    ROOT / "billing" / "services.py",
]


def test_study_and_billing_services_never_take_an_http_request():
    taking_requests = []
    for path in SERVICE_MODULES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and any(alias.name == "HttpRequest" for alias in node.names):
                taking_requests.append(str(path.relative_to(ROOT)))

    assert taking_requests == []


def _request(*, user=None, token=None):
    request = RequestFactory().post("/", REMOTE_ADDR="203.0.113.7", HTTP_USER_AGENT="Viewer/2.1")
    if user is not None:
        request.user = user
    if token is not None:
        request.api_token = token
    return request


def test_a_trashed_study_is_audited_with_the_person_address_and_browser_the_view_saw(clinic, owner):
    study = make_study(clinic=clinic)

    browse_services.study_delete(clinic=clinic, study=study, by=Actor.from_request(_request(user=owner)))

    event = AuditEvent.objects.get(clinic=clinic, action="study.deleted")
    assert (event.actor, event.actor_label) == (owner, owner.email)
    assert (event.ip_address, event.user_agent) == ("203.0.113.7", "Viewer/2.1")


def test_an_api_token_is_named_by_its_label_and_never_becomes_a_person(clinic, owner):
    token = api_token_create(clinic=clinic, name="pacs-bridge", role="uploader", created_by=owner).token
    request = _request(token=token)

    by_actor = audit_record(clinic=clinic, action="test.actor", by=Actor.from_request(request))
    by_request = audit_record(clinic=clinic, action="test.request", request=request)

    for event in (by_actor, by_request):
        assert (event.actor, event.actor_label, event.ip_address) == (None, "token:pacs-bridge", "203.0.113.7")


def test_a_system_actor_is_named_and_has_no_address(clinic):
    event = audit_record(clinic=clinic, action="test.system", by=Actor.system("retention"))

    assert (event.actor, event.actor_label, event.ip_address, event.user_agent) == (None, "retention", None, "")

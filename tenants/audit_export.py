"""Audit trail exports: CSV rows and HL7 FHIR R4 AuditEvent resources.

Both are generators so that a long trail is streamed, never built whole in memory.

FHIR mapping (https://hl7.org/fhir/R4/auditevent.html):

- ``type``: a DICOM audit event ID (DCM 1101xx, PS3.15 A.5): from ``KNOWN_ACTIONS``, or else from the
  action's family (``auth.*`` is User Authentication, ``audit.*`` Audit Log Used, study reads DICOM
  Instances Accessed, ...);
  ``subtype``: DCM Login/Logout where they apply, plus always our own action code in the
  ``urn:pacs-portal:audit-action`` system, so that nothing is lost in the mapping.
- ``action``: C/R/U/D/E, from the table of the project's actions (``KNOWN_ACTIONS``) or else from the
  action's verb (``created`` is C, ``viewed`` R, ``role_changed`` U, ``deleted`` D; sign-ins, searches
  and anything else E).
- ``outcome``: ``0`` success, ``4`` minor failure (refused, failed), ``8`` serious failure (error).
- ``agent``: who (the user's uuid and e-mail, or the API token), ``requestor`` true, and the network
  address (type ``2``, IP address) the request came from.
- ``source``: this portal as an application server (security-source-type ``4``), site = clinic uuid.
- ``entity``: what was acted on (our object type and opaque id; never patient data) with the
  entry's details as ``entity.detail``, and the entry's place in the hash chain.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from django.utils import timezone

from tenants.models import AuditEvent, Clinic

CSV_COLUMNS = [
    "sequence", "recorded_at", "actor", "action", "object_type", "object_id", "result",
    "ip_address", "user_agent", "details", "prev_hash", "hash",
]
# A spreadsheet would run a cell starting with these as a formula; actor names and user agents come from
# whoever called us, so they are neutralised with a leading quote (OWASP CSV injection advice).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ACTION_SYSTEM = "urn:pacs-portal:audit-action"
OBJECT_SYSTEM = "urn:pacs-portal:object:"
# Stable ids for exported resources: the same entry always gets the same id in every export.
_EXPORT_NAMESPACE = uuid.UUID("6f1c1f0e-8a5b-4c59-9a43-0c7d2b1e5a10")

# DICOM audit event IDs (PS3.15 A.5, CID 400) used as AuditEvent.type.
_DCM_TYPES = {
    "110100": "Application Activity",
    "110101": "Audit Log Used",
    "110103": "DICOM Instances Accessed",
    "110104": "DICOM Instances Transferred",
    "110105": "DICOM Study Deleted",
    "110106": "Export",
    "110107": "Import",
    "110110": "Patient Record",
    "110112": "Query",
    "110114": "User Authentication",
    "110136": "Security Roles Changed",
    "110137": "User Security Attributes Changed",
}
# The project's actions, each with its event type and FHIR action code (C create, R read/view/print,
# U update, D delete, E execute: sign-in, queries and other functions). New actions not listed here
# are mapped by the rules below the table; list them here when the rules guess wrong.
KNOWN_ACTIONS: dict[str, tuple[str, str]] = {
    "auth.login": ("110114", "E"),
    "auth.login_failed": ("110114", "E"),
    "auth.locked_out": ("110114", "E"),
    "auth.logout": ("110114", "E"),
    "auth.logout_everywhere": ("110114", "E"),
    "auth.session_expired": ("110114", "E"),
    "auth.two_factor_enabled": ("110137", "U"),
    "auth.two_factor_disabled": ("110137", "U"),
    "api_token.created": ("110137", "C"),
    "api_token.revoked": ("110137", "U"),
    "api_token.used": ("110114", "E"),
    "clinic.created": ("110100", "C"),
    "clinic.security_changed": ("110137", "U"),
    "invitation.sent": ("110136", "C"),
    "invitation.accepted": ("110136", "U"),
    "invitation.revoked": ("110136", "U"),
    "member.role_changed": ("110136", "U"),
    "member.removed": ("110136", "D"),
    "audit.viewed": ("110101", "R"),
    "audit.exported": ("110101", "R"),
    "study.stored": ("110107", "C"),
    "dicomweb.store": ("110107", "C"),
    "upload.archive_unpacked": ("110107", "C"),
    "upload_link.received": ("110107", "C"),
    "instance.conflict": ("110107", "E"),
    "study.viewed": ("110103", "R"),
    "study.viewer_opened": ("110103", "R"),
    "study.downloaded": ("110106", "R"),
    "study.restored": ("110103", "U"),
    "study.deleted": ("110105", "D"),
    "study.purged": ("110105", "D"),
    "dimse.association": ("110100", "E"),
    "dimse.find": ("110112", "E"),
    "dimse.retrieve": ("110104", "R"),
    "share.created": ("110106", "C"),
    "share.extended": ("110106", "U"),
    "share.revoked": ("110106", "U"),
    "upload_link.created": ("110100", "C"),
    "upload_link.revoked": ("110100", "U"),
    "anonymization.project_created": ("110100", "C"),
    "anonymization.requested": ("110103", "E"),
    "anonymization.finished": ("110107", "C"),
    "anonymization.reidentified": ("110110", "R"),
    "dicom_node.created": ("110100", "C"),
    "dicom_node.deleted": ("110100", "D"),
}

_VERB_ACTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("D", ("deleted", "removed", "purged", "trashed", "destroyed")),
    ("C", ("created", "added", "stored", "uploaded", "imported", "invited", "signed_up", "registered", "sent",
           "received")),
    ("U", ("updated", "changed", "revoked", "rotated", "accepted", "enabled", "disabled", "restored",
           "replicated", "renamed", "reset", "extended", "canceled", "cancelled")),
    ("R", ("viewed", "read", "downloaded", "accessed", "retrieved", "opened", "exported")),
]

_OUTCOMES = {"success": "0", "error": "8"}


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def fhir_action_code(action: str) -> str:
    """Map an action such as ``study.deleted`` to FHIR's C/R/U/D/E (by the table, else by its verb)."""
    if action in KNOWN_ACTIONS:
        return KNOWN_ACTIONS[action][1]
    verb = action.rsplit(".", 1)[-1]
    for code, verbs in _VERB_ACTIONS:
        if verb in verbs or any(verb.endswith(f"_{v}") for v in verbs):
            return code
    # Sign-ins, searches, queries and anything else that runs a function rather than changing a record.
    return "E"


def _type_code(action: str, action_code: str) -> str:
    if action in KNOWN_ACTIONS:
        return KNOWN_ACTIONS[action][0]
    family, _, verb = action.partition(".")
    if family == "auth":
        return "110114"
    if family == "audit":
        return "110101"
    if family in {"member", "invitation"}:
        return "110136"
    if family in {"api_token", "security"} or "security" in verb:
        return "110137"
    if family in {"study", "series", "instance", "dicomweb", "dimse"}:
        if verb.endswith(("exported", "downloaded")):
            return "110106"
        if verb.endswith(("searched", "queried", "find")):
            return "110112"
        return {"C": "110107", "D": "110105"}.get(action_code, "110103")
    return "110100"


def fhir_type(action: str, action_code: str) -> dict[str, str]:
    """Pick the DICOM audit event ID that best names what kind of event this was."""
    code = _type_code(action, action_code)
    return _coding(DCM, code, _DCM_TYPES[code])


def fhir_outcome(result: str) -> str:
    """FHIR outcome: 0 success, 8 serious failure (an error), 4 minor failure (refused, failed...)."""
    return _OUTCOMES.get(result, "4")


def _subtypes(action: str) -> list[dict[str, str]]:
    subtypes = []
    verb = action.rsplit(".", 1)[-1]
    if action.startswith("auth."):
        if verb.startswith("login") or verb in {"locked_out", "lockout"}:
            subtypes.append(_coding(DCM, "110122", "Login"))
        elif verb.startswith("logout") or verb == "session_expired":
            subtypes.append(_coding(DCM, "110123", "Logout"))
    subtypes.append(_coding(ACTION_SYSTEM, action, action))
    return subtypes


def _agent(event: AuditEvent) -> dict[str, Any]:
    is_token = event.actor_label.startswith("token:")
    who: dict[str, Any] = {"display": event.actor_label or "system"}
    if event.actor_id is not None and event.actor is not None:
        who["identifier"] = {"system": "urn:pacs-portal:user", "value": str(event.actor.uuid)}
    if is_token or event.actor_label in {"", "system"}:
        agent_type = _coding(DCM, "110150", "Application")
    else:
        agent_type = _coding("http://terminology.hl7.org/CodeSystem/extra-security-role-type", "humanuser",
                             "human user")
    agent: dict[str, Any] = {"type": {"coding": [agent_type]}, "who": who, "requestor": True}
    if event.ip_address:
        agent["network"] = {"address": event.ip_address, "type": "2"}
    return agent


def _entity_type(object_type: str) -> dict[str, str]:
    system = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
    if object_type == "user":
        return _coding(system, "1", "Person")
    if object_type == "clinic":
        return _coding(system, "3", "Organization")
    return _coding(system, "2", "System Object")


def _detail(name: str, value: Any) -> dict[str, str]:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return {"type": name, "valueString": text}


def fhir_audit_event(event: AuditEvent, *, clinic: Clinic) -> dict[str, Any]:
    """Return one audit entry as a FHIR R4 AuditEvent resource (a plain dict, ready for JSON)."""
    action_code = fhir_action_code(event.action)
    resource_id = str(uuid.uuid5(_EXPORT_NAMESPACE, f"{clinic.uuid}:{event.sequence}"))
    details = [_detail(key, value) for key, value in sorted((event.details or {}).items())]
    if event.user_agent:
        details.append(_detail("user_agent", event.user_agent))
    details += [
        _detail("sequence", str(event.sequence)),
        _detail("prev_hash", event.prev_hash),
        _detail("hash", event.hash),
    ]
    entity: dict[str, Any] = {"type": _entity_type(event.object_type), "detail": details}
    if event.object_type or event.object_id:
        entity["what"] = {
            "identifier": {"system": f"{OBJECT_SYSTEM}{event.object_type or 'unknown'}", "value": event.object_id},
            "display": f"{event.object_type} {event.object_id}".strip(),
        }
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": resource_id,
        "type": fhir_type(event.action, action_code),
        "subtype": _subtypes(event.action),
        "action": action_code,
        "recorded": event.created_at.isoformat(),
        "outcome": fhir_outcome(event.result),
        "agent": [_agent(event)],
        "source": {
            "site": str(clinic.uuid),
            "observer": {"display": "PACS Portal"},
            "type": [_coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4",
                             "Application Server")],
        },
        "entity": [entity],
    }
    if event.result != "success":
        resource["outcomeDesc"] = event.result
    return resource


def fhir_bundle_chunks(events: Iterable[AuditEvent], *, clinic: Clinic) -> Iterator[str]:
    """Yield a FHIR R4 Bundle (type collection) of AuditEvent resources, as JSON text in pieces."""
    head = {"resourceType": "Bundle", "type": "collection", "timestamp": timezone.now().isoformat()}
    yield json.dumps(head)[:-1] + ', "entry": ['
    for index, event in enumerate(events):
        resource = fhir_audit_event(event, clinic=clinic)
        entry = {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}
        yield ("," if index else "") + json.dumps(entry)
    yield "]}"


def _csv_safe(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def csv_chunks(events: Iterable[AuditEvent]) -> Iterator[str]:
    """Yield the entries as CSV text, header first, one row per chunk."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(CSV_COLUMNS)
    yield flush()
    for event in events:
        writer.writerow([_csv_safe(value) for value in (
            event.sequence, event.created_at.isoformat(), event.actor_label, event.action, event.object_type,
            event.object_id, event.result, event.ip_address or "", event.user_agent,
            json.dumps(event.details, sort_keys=True, default=str), event.prev_hash, event.hash,
        )])
        yield flush()

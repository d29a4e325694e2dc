"""The audit trail: append hash-chained entries, and check a chain.

Each clinic has its own chain (events without a clinic form the global chain). An entry's hash covers
its content and the previous entry's hash, so editing or deleting any entry breaks every hash after it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.http import HttpRequest

from tenants.models import AuditChain, AuditEvent, Clinic, User

GENESIS_HASH = "0" * 64


def _chain_key(clinic: Clinic | None) -> str:
    return str(clinic.uuid) if clinic is not None else "global"


def audit_event_digest(event: AuditEvent) -> str:
    """Return the hash of an entry: its content and the previous entry's hash."""
    content = {
        "clinic": str(event.clinic.uuid) if event.clinic_id else None,
        "sequence": event.sequence,
        "created_at": event.created_at.isoformat(),
        "actor": event.actor_label,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "result": event.result,
        "ip_address": event.ip_address,
        "user_agent": event.user_agent,
        "details": event.details,
        "prev_hash": event.prev_hash,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def client_address(request: HttpRequest) -> str | None:
    # REMOTE_ADDR only: X-Forwarded-For is client-controlled unless a trusted proxy rewrites it.
    return request.META.get("REMOTE_ADDR") or None


def audit_record(
    *,
    clinic: Clinic | None,
    action: str,
    request: HttpRequest | None = None,
    actor: User | None = None,
    actor_label: str = "",
    object_type: str = "",
    object_id: str = "",
    result: str = "success",
    details: dict[str, Any] | None = None,
    ip_address: str | None = None,
) -> AuditEvent:
    """Append an entry to the clinic's audit chain and return it.

    The actor defaults to the request's user or API token. Never put patient names, IDs or birth
    dates in ``details``: the trail names objects by their opaque ids.
    """
    user_agent = ""
    if request is not None:
        token = getattr(request, "api_token", None)
        request_user = getattr(request, "user", None)
        if actor is None and request_user is not None and request_user.is_authenticated:
            actor = request_user
        if not actor_label:
            actor_label = token.label if token is not None else (actor.email if actor else "anonymous")
        ip_address = ip_address or client_address(request)
        user_agent = request.META.get("HTTP_USER_AGENT", "")[:512]
    elif not actor_label:
        actor_label = actor.email if actor else "system"
    with transaction.atomic():
        chain, _ = AuditChain.objects.get_or_create(key=_chain_key(clinic))
        chain = AuditChain.objects.select_for_update().get(pk=chain.pk)
        event = AuditEvent(
            clinic=clinic,
            sequence=chain.last_sequence + 1,
            actor=actor,
            actor_label=actor_label[:255],
            action=action,
            object_type=object_type,
            object_id=str(object_id)[:128],
            result=result,
            ip_address=ip_address,
            user_agent=user_agent,
            details=details or {},
            prev_hash=chain.last_hash,
        )
        event.hash = audit_event_digest(event)
        event.save()
        chain.last_sequence = event.sequence
        chain.last_hash = event.hash
        chain.save(update_fields=["last_sequence", "last_hash"])
    return event


@dataclass(frozen=True)
class ChainProblem:
    chain: str
    sequence: int
    problem: str


def audit_chain_verify(*, clinic: Clinic | None) -> Iterator[ChainProblem]:
    """Yield every break in one chain: an edited entry, a missing one, or a cut-off end."""
    key = _chain_key(clinic)
    expected_prev = GENESIS_HASH
    expected_sequence = 1
    events = AuditEvent.objects.filter(clinic=clinic).select_related("clinic").order_by("sequence")
    for event in events.iterator(chunk_size=2000):
        if event.sequence != expected_sequence:
            yield ChainProblem(key, expected_sequence, f"entries {expected_sequence}..{event.sequence - 1} are missing")
        if event.prev_hash != expected_prev:
            yield ChainProblem(key, event.sequence, "does not follow the entry before it")
        if audit_event_digest(event) != event.hash:
            yield ChainProblem(key, event.sequence, "was changed after it was written")
        expected_prev = event.hash
        expected_sequence = event.sequence + 1
    head = AuditChain.objects.filter(key=key).first()
    if head is not None and head.last_sequence != expected_sequence - 1:
        yield ChainProblem(key, expected_sequence, f"the chain ends early; it should reach {head.last_sequence}")

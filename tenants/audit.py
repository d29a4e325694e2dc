"""The audit trail: append hash-chained entries, and check a chain.

Each clinic has its own chain (events without a clinic form the global chain). An entry's hash covers
its content and the previous entry's hash, so editing or deleting any entry breaks every hash after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from tenants.models import AuditChain, AuditEvent, Clinic, User

GENESIS_HASH = "0" * 64
logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class Actor:
    """Who acts, as the audit trail records it: built by a view from its request (``from_request``), so
    services never take an ``HttpRequest`` only to be audited.

    ``user`` is the signed-in person, if any; ``token_label`` the API token's label (a token is named
    even when a person is given); ``label`` names who acted when there is no person (a share or upload
    link's grant, "system"); ``ip_address`` and ``user_agent`` are the client's.
    """

    user: User | None = None
    token_label: str = ""
    label: str = "anonymous"
    ip_address: str | None = None
    user_agent: str = ""

    @classmethod
    def from_request(cls, request: HttpRequest) -> Actor:
        token = getattr(request, "api_token", None)
        request_user = getattr(request, "user", None)
        # Share and upload links stand in for a membership and carry a label naming the link.
        grant_label = getattr(getattr(request, "membership", None), "label", "")
        return cls(
            # A token request's user is a TokenUser, not a person: only real users become the actor.
            user=request_user if isinstance(request_user, User) and request_user.is_authenticated else None,
            token_label=str(token.label) if token is not None else "",
            label=grant_label or "anonymous",
            ip_address=client_address(request),
            user_agent=request.META.get("HTTP_USER_AGENT", "")[:512],
        )

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls(label=label)

    def reader_key(self) -> str:
        """Who reads, as the read-audit window tells readers apart (``read_first_in_window``)."""
        if self.user is not None:
            return f"u{self.user.pk}"
        return f"t:{self.token_label}" if self.token_label else f"l:{self.label}"

    def audit_label(self, person: User | None = None) -> str:
        """The label the trail records: the token's, else the person's e-mail, else ``label``."""
        person = person or self.user
        return self.token_label or (person.email if person else self.label)


# A read of patient data is recorded once per reader, object and kind of read per window: a viewer's
# hundreds of frame requests, or a study page's thumbnail per series, make one entry a minute, not one each.
READ_AUDIT_WINDOW_SECONDS = 60


def read_first_in_window(*parts: object) -> bool:
    """Say whether the read named by ``parts`` (say clinic, reader, action, study) is the first of its window.

    Shared through the cache by every process, so a reader spread over several web workers is recorded once.
    """
    # Hashed: a token's or link's label may hold characters a cache key must not.
    key = "read-audit:" + hashlib.sha256(":".join(str(part) for part in parts).encode()).hexdigest()
    return bool(cache.add(key, 1, READ_AUDIT_WINDOW_SECONDS))


def audit_record(
    *,
    clinic: Clinic | None,
    action: str,
    by: Actor | None = None,
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

    ``by`` says who acts (services take an ``Actor``; views may pass their ``request`` instead, which is
    the same as ``by=Actor.from_request(request)``); ``actor``, when given, is the person responsible
    and wins over ``by.user``. Never put patient names, IDs or birth dates in ``details``: the trail
    names objects by their opaque ids.
    """
    user_agent = ""
    if by is None and request is not None:
        by = Actor.from_request(request)
    if by is not None:
        if actor is None:
            actor = by.user
        if not actor_label:
            actor_label = by.audit_label(actor)
        ip_address = ip_address or by.ip_address
        user_agent = by.user_agent
    elif not actor_label:
        actor_label = actor.email if actor else "system"
    with transaction.atomic():
        key = _chain_key(clinic)
        # The chain exists but for a clinic's first entry: lock it in one statement (every search is audited).
        chain = AuditChain.objects.select_for_update().filter(key=key).first()
        if chain is None:
            chain, _ = AuditChain.objects.get_or_create(key=key)
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


def audit_chain_verify(
    *, clinic: Clinic | None, counter: list[int] | None = None
) -> Iterator[ChainProblem]:
    """Yield every break in one chain: an edited entry, a missing one, or a cut-off end.

    ``counter``, when given, gets the number of entries read appended to it.
    """
    key = _chain_key(clinic)
    entries = 0
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
        entries += 1
    if counter is not None:
        counter.append(entries)
    head = AuditChain.objects.filter(key=key).first()
    if head is not None and head.last_sequence != expected_sequence - 1:
        yield ChainProblem(key, expected_sequence, f"the chain ends early; it should reach {head.last_sequence}")
    elif head is not None and entries and head.last_hash != expected_prev:
        # The last entry was rewritten with a freshly computed hash; the head still holds the original one.
        yield ChainProblem(key, expected_sequence - 1, "does not match the hash recorded in the chain head")


@dataclass(frozen=True)
class LabelledProblem:
    label: str
    sequence: int
    problem: str


@dataclass(frozen=True)
class AuditVerifyReport:
    chains: int
    entries: int
    problems: list[LabelledProblem]


def audit_chains_verify(*, clinic: Clinic | None = None) -> AuditVerifyReport:
    """Check one clinic's chain, or every clinic's chain and the global one when ``clinic`` is None."""
    # Cross-clinic on purpose: an operator's integrity check covers every tenant.
    targets: list[Clinic | None] = [clinic] if clinic is not None else [*Clinic.objects.order_by("pk"), None]
    problems: list[LabelledProblem] = []
    counter: list[int] = []
    for target in targets:
        label = f"{target.slug} ({target.uuid})" if target is not None else "global"
        for problem in audit_chain_verify(clinic=target, counter=counter):
            problems.append(LabelledProblem(label, problem.sequence, problem.problem))
    if clinic is None:
        # A chain head whose clinic no longer resolves still has entries to account for.
        known = {str(c.uuid) for c in targets if c is not None} | {"global"}
        for head in AuditChain.objects.exclude(key__in=known):
            problems.append(LabelledProblem(head.key, head.last_sequence, "has a chain head but no clinic"))
    return AuditVerifyReport(chains=len(targets), entries=sum(counter), problems=problems)


def audit_chain_heads() -> dict[str, dict[str, Any]]:
    """Return every chain's head (last sequence and hash), to anchor outside the database."""
    # Cross-clinic on purpose: the anchor covers every tenant's chain and the global one.
    return {
        head.key: {"sequence": head.last_sequence, "hash": head.last_hash}
        for head in AuditChain.objects.order_by("key")
    }


@dataclass(frozen=True)
class AnchorProblem:
    chain: str
    sequence: int
    problem: str
    kind: str  # "lost": written before the disaster, not in the restored log; "changed": differs


def audit_anchor_check(*, chains: dict[str, dict[str, Any]]) -> list[AnchorProblem]:
    """Check the (restored) log against chain heads anchored earlier in the backup store.

    Every anchored head must be in the log with the same hash. An anchored entry beyond the end of the
    log was written before the disaster and lost with it ("lost"); one that is there with another hash,
    or missing inside the chain, means the log was changed ("changed").
    """
    problems: list[AnchorProblem] = []
    for key, head in sorted(chains.items()):
        sequence, expected = int(head["sequence"]), str(head["hash"])
        if sequence <= 0:
            continue
        events = AuditEvent.objects.filter(clinic=None) if key == "global" else AuditEvent.objects.filter(
            clinic__uuid=key
        )
        event = events.filter(sequence=sequence).only("hash").first()
        if event is not None:
            if event.hash != expected:
                problems.append(AnchorProblem(key, sequence, "differs from the entry anchored in the backup store",
                                              "changed"))
            continue
        last = events.order_by("-sequence").values_list("sequence", flat=True).first() or 0
        if last < sequence:
            problems.append(AnchorProblem(
                key, last + 1, f"entries {last + 1}..{sequence} were written before the disaster and are not in "
                "the restored log (they came after the last database backup)", "lost",
            ))
        else:
            problems.append(AnchorProblem(key, sequence, "is missing although later entries exist", "changed"))
    return problems


@dataclass(frozen=True)
class AuditFilter:
    """What the audit page, its exports and the API filter by; empty values filter nothing.

    ``action`` matches an action exactly or as a family (``auth`` and ``auth.`` match ``auth.login``);
    ``object`` matches an object type exactly or part of an object id; ``date_to`` is inclusive.
    """

    date_from: date | None = None
    date_to: date | None = None
    actor: str = ""
    action: str = ""
    object: str = ""
    result: str = ""

    def as_details(self) -> dict[str, str]:
        """The filters in use, for the audit entry that records who looked at the trail."""
        return {name: str(value) for name, value in asdict(self).items() if value not in (None, "")}


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_current_timezone())


def audit_event_list(*, clinic: Clinic, filters: AuditFilter | None = None) -> QuerySet[AuditEvent]:
    """Return the clinic's audit entries matching the filters, newest first."""
    filters = filters or AuditFilter()
    events = AuditEvent.objects.for_clinic(clinic)
    if filters.date_from:
        events = events.filter(created_at__gte=_day_start(filters.date_from))
    if filters.date_to:
        events = events.filter(created_at__lt=_day_start(filters.date_to + timedelta(days=1)))
    if filters.actor:
        events = events.filter(actor_label__icontains=filters.actor)
    if filters.action:
        family = filters.action.rstrip(".")
        events = events.filter(Q(action=filters.action) | Q(action__startswith=f"{family}."))
    if filters.object:
        events = events.filter(Q(object_type__iexact=filters.object) | Q(object_id__icontains=filters.object))
    if filters.result:
        events = events.filter(result=filters.result)
    return events.order_by("-sequence")


def audit_action_list(*, clinic: Clinic) -> list[str]:
    """Return the distinct actions in the clinic's trail, for the filter's suggestions."""
    return list(AuditEvent.objects.for_clinic(clinic).order_by("action").values_list("action", flat=True).distinct())


def audit_result_list(*, clinic: Clinic) -> list[str]:
    """Return the distinct results in the clinic's trail (at least success and failure)."""
    found = set(AuditEvent.objects.for_clinic(clinic).values_list("result", flat=True).distinct())
    return sorted(found | {"success", "failure"})


def audit_chains_check() -> AuditVerifyReport:
    """Verify every chain; on a break, log it as an error and e-mail the operators (OPERATOR_EMAILS).

    Run daily by Celery beat (tenants.tasks.audit_chains_check), so tampering is noticed even when
    nobody runs ``manage.py verify_audit_log``. The mail names chains and entry numbers only.
    """
    report = audit_chains_verify()
    if report.problems:
        lines = [f"chain {p.label}: entry {p.sequence} {p.problem}" for p in report.problems]
        logger.error("audit log tampering detected: %s", "; ".join(lines))
        if settings.OPERATOR_EMAILS:
            send_mail(
                f"[PACS audit] {len(report.problems)} break(s) in the audit log",
                "The daily check of the audit hash chains found entries that were changed, removed or cut off:\n\n"
                + "\n".join(lines)
                + "\n\nRun `manage.py verify_audit_log` for the current state.\n",
                None, settings.OPERATOR_EMAILS, fail_silently=False,
            )
    return report

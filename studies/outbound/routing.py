"""Routing rules applied to incoming instances: which nodes each newly stored instance is owed to.

Ingest calls :func:`instances_route` inside its index transaction, so a delivery row exists exactly
when its instance does; the deliveries themselves are sent by ``outbound.route_deliveries_send``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import transaction
from django.db.models import QuerySet

from portal import prepared
from portal.celery import app
from studies.ingest.lookups import Lookups, looked_up
from studies.models import Instance
from studies.outbound.models import RouteDelivery, RoutingRule
from tenants.models import Clinic

# Ways in that bring back what the clinic already had somewhere: forwarded only by a rule naming them.
EXPLICIT_ONLY_SOURCES = {"migration", "rebuild"}


def _rule_matches(rule: RoutingRule, *, calling_ae_title: str, modality: str, source: str) -> bool:
    if not rule.source and source in EXPLICIT_ONLY_SOURCES:
        return False
    return ((not rule.calling_ae_title or rule.calling_ae_title == calling_ae_title)
            and (not rule.modality or rule.modality == modality)
            and (not rule.source or rule.source == source))


def _active_rules(clinic: Clinic) -> list[RoutingRule]:
    # Most clinics route nothing: a statement compiled once says so for each batch, and only a clinic
    # with rules pays for reading them with their destinations.
    if not prepared.rows("routing.active_rule", _active_rule_ids, clinic_id=clinic.pk):
        return []
    return list(RoutingRule.objects.for_clinic(clinic).filter(is_active=True).prefetch_related("destinations"))


def _active_rule_ids(*, clinic_id: int) -> QuerySet:
    return RoutingRule.objects.filter(clinic_id=clinic_id, is_active=True).values("id")[:1]


def instances_route(
    *, clinic: Clinic, instances: list[Instance], source: str, calling_ae_title: str = "", lookups: Lookups | None = None
) -> int:
    """Owe every newly stored instance to the nodes of the rules it matches; return deliveries created.

    Called inside the ingest transaction, so a delivery exists exactly when its instance does. ``lookups``
    (the sender's stream) reuses "no rules" for a few seconds rather than asking per image; rules
    themselves are read afresh, since a delivery naming a rule deleted meanwhile would fail the commit.
    """
    rules = looked_up(lookups, "routing-rules", lambda: _active_rules(clinic), keep=lambda found: not found)
    if not rules or not instances:
        return 0
    deliveries: list[RouteDelivery] = []
    for instance in instances:
        modality = instance.series.modality if instance.series_id else ""
        for rule in rules:
            if _rule_matches(rule, calling_ae_title=calling_ae_title, modality=modality, source=source):
                deliveries.extend(RouteDelivery(clinic=clinic, rule=rule, node=node, instance=instance)
                                  for node in rule.destinations.all())
    RouteDelivery.objects.bulk_create(deliveries, ignore_conflicts=True)
    nodes = {d.node_id for d in deliveries}
    for node_id in nodes:
        send = app.signature("outbound.route_deliveries_send", kwargs={"clinic_id": clinic.pk, "node_id": node_id})
        transaction.on_commit(send.apply_async, robust=True)
    return len(deliveries)


def instances_route_indexed(clinic: Clinic, instances: Sequence[Instance], origin: Any) -> None:
    """The ingest hook (``studies.ingest.hooks.indexed_register``): route a committed batch's new instances."""
    instances_route(clinic=clinic, instances=list(instances), source=origin.source,
                    calling_ae_title=getattr(origin.dicom_node, "ae_title", "") or "", lookups=origin.lookups)

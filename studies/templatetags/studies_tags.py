"""Display helpers for DICOM values, and the studies cards of the clinic dashboard."""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse

from billing import selectors as billing_selectors
from studies import names
from studies.backup import selectors as backup_selectors
from studies.browse import selectors, services
from studies.models import Study
from studies.quarantine import services as quarantine
from studies.viewer import ohif
from tenants.audit import Actor
from tenants.roles import Action

register = template.Library()


@register.filter
def person_name(value: str) -> str:
    """Show a DICOM PN ("SMITH^JOHN^^DR") as "SMITH, JOHN DR" (studies.names holds the one format)."""
    return names.person_name_display(value)


@register.filter
def modalities(value: str) -> str:
    """Show a backslash-separated multi-value ("CT\\SR") as "CT, SR"."""
    return ", ".join(part for part in (value or "").split("\\") if part)


@register.simple_tag
def ohif_study_url(study: Study, *, clinic_slug: str = "", share_token: str = "") -> str:
    """OHIF's route for one study, in the clinic's viewer or a share link's: its page records the opening."""
    if share_token:
        public_url = reverse("share-viewer:ohif", kwargs={"share_token": share_token})
    else:
        public_url = reverse("viewer:ohif", kwargs={"clinic_slug": clinic_slug})
    return ohif.study_url(public_url=public_url, study_instance_uid=study.study_instance_uid)


@register.inclusion_tag("studies/study_dashboard_cards.html", takes_context=True)
def studies_dashboard_cards(context: template.Context) -> dict[str, Any]:
    """The dashboard's "recent studies", "storage used", "backup" and "held for review" cards, each shown only to those allowed."""
    request = context.get("request")
    clinic = getattr(request, "clinic", None)
    membership = getattr(request, "membership", None)
    if clinic is None or membership is None:
        return {}
    cards: dict[str, Any] = {"clinic": clinic}
    if membership.can(Action.VIEW):
        cards["recent_studies"] = selectors.study_recent(clinic=clinic)
        services.study_search_record(clinic=clinic, search=selectors.StudySearch(sort="-created"),
                                     count=len(cards["recent_studies"]), source="dashboard", by=Actor.from_request(request))
    if membership.can(Action.BILLING):
        cards["usage"] = billing_selectors.usage_get(clinic=clinic)
        cards["study_count"] = selectors.study_count_live(clinic=clinic)
    if membership.can(Action.MANAGE):
        cards["backup"] = backup_selectors.backup_status(clinic=clinic)
    if membership.can(Action.DELETE):
        cards["held_count"] = quarantine.quarantine_list(clinic=clinic).count()
    return cards

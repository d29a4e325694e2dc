"""The role table from DESIGN.md, in one place.

Pages, the REST API, DICOMweb and DIMSE all ask ``role_can(role, action)``; nothing else decides who
may do what.
"""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    CLINICIAN = "clinician", "Clinician"
    UPLOADER = "uploader", "Uploader"
    BILLING = "billing", "Billing admin"


class Action(models.TextChoices):
    UPLOAD = "upload", "Upload studies"
    VIEW = "view", "Search, view and download studies"
    SHARE = "share", "Share and anonymize studies"
    DELETE = "delete", "Delete studies"
    MANAGE = "manage", "Manage members, roles, security policy and audit log"
    BILLING = "billing", "Manage plan, invoices and usage"


ROLE_ACTIONS: dict[str, frozenset[str]] = {
    Role.OWNER: frozenset(Action.values),
    Role.ADMIN: frozenset({Action.UPLOAD, Action.VIEW, Action.SHARE, Action.DELETE, Action.MANAGE}),
    Role.CLINICIAN: frozenset({Action.UPLOAD, Action.VIEW, Action.SHARE}),
    Role.UPLOADER: frozenset({Action.UPLOAD}),
    Role.BILLING: frozenset({Action.BILLING}),
}


def role_can(role: str, action: str) -> bool:
    """Say whether a member (or API token) with this role may perform the action."""
    return action in ROLE_ACTIONS.get(role, frozenset())

"""Who or what sent an instance: the typed origin every way in passes to ingest instead of a request.

The audit needs an actor (a user, or a label for a token, a link, a node or a job), an address, and the
kind of door; anonymize-on-ingest needs the API token, the upload link or the DICOM node whose rule
applies. An ``Origin`` carries exactly that and nothing else, so services never see an ``HttpRequest``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from django.http import HttpRequest

from studies.ingest.lookups import Lookups
from tenants.audit import client_address
from tenants.models import User


class OriginKind(StrEnum):
    USER = "user"  # a signed-in member (browser upload, STOW-RS with the session)
    API_TOKEN = "api_token"  # STOW-RS or the REST upload API with a Bearer token
    UPLOAD_LINK = "upload_link"  # an outside sender's upload link
    DICOM_NODE = "dicom_node"  # C-STORE from a registered node
    ANONYMIZATION = "anonymization"  # an anonymization job writing its results
    REBUILD = "rebuild"  # rebuild_index from the replica
    SYSTEM = "system"  # benchmarks, the shell, maintenance commands
    MIGRATION = "migration"  # a migration job pulling from a DICOMweb source (no registered node)


@dataclass(frozen=True)
class Origin:
    """Who or what sent an instance, with what the audit trail and the ingest rules need."""

    kind: OriginKind
    # The door: "upload", "zip", "dicomweb", "dimse", "anonymize", "rebuild", ...; recorded in the audit.
    source: str
    user: User | None = None
    api_token: Any = None
    upload_link: Any = None
    dicom_node: Any = None
    anonymization_job: Any = None
    ip_address: str | None = None
    user_agent: str = ""
    # What the audit names a job-driven origin that has no node, e.g. "migration:<uuid>".
    label: str = ""
    # The sender's stream (one C-STORE association, one job): lookups its files may share for a few
    # seconds (studies.ingest.lookups); None looks everything up afresh.
    lookups: Lookups | None = field(default=None, compare=False, repr=False)

    @property
    def actor_label(self) -> str:
        """The label the audit trail records for this origin (never patient data)."""
        if self.user is not None:
            return self.user.email
        if self.api_token is not None:
            return str(self.api_token.label)
        if self.upload_link is not None:
            return f"upload_link:{self.upload_link.uuid}"
        if self.dicom_node is not None:
            return f"dicom:{self.dicom_node.ae_title}"
        if self.label:
            return self.label
        if self.kind == OriginKind.ANONYMIZATION:
            return "anonymization job"
        return str(self.kind)

    @classmethod
    def from_request(cls, request: HttpRequest, *, source: str, user: User | None = None) -> Origin:
        """The origin of a web request: its user, API token or upload link, and its address."""
        token = getattr(request, "api_token", None)
        link = getattr(request, "upload_link", None)
        request_user = getattr(request, "user", None)
        if user is None and isinstance(request_user, User) and request_user.is_authenticated:
            user = request_user
        kind = (
            OriginKind.UPLOAD_LINK
            if link is not None
            else (OriginKind.API_TOKEN if token is not None else OriginKind.USER)
        )
        return cls(
            kind=kind,
            source=source,
            user=user,
            api_token=token,
            upload_link=link,
            ip_address=client_address(request),
            user_agent=request.META.get("HTTP_USER_AGENT", "")[:512],
        )

    @classmethod
    def dicom(cls, *, node: Any, address: str | None = None, lookups: Lookups | None = None) -> Origin:
        return cls(kind=OriginKind.DICOM_NODE, source="dimse", dicom_node=node, ip_address=address or None,
                   lookups=lookups)

    @classmethod
    def migration(cls, *, node: Any) -> Origin:
        """An instance pulled from an old archive by a migration job (studies.outbound)."""
        return cls(kind=OriginKind.DICOM_NODE, source="migration", dicom_node=node)

    @classmethod
    def migration_dicomweb(cls, *, job: Any) -> Origin:
        """An instance pulled from a DICOMweb source by a migration job (its URL is in the job, not here)."""
        return cls(kind=OriginKind.MIGRATION, source="migration", label=f"migration:{job.uuid}")

    @classmethod
    def anonymization(cls, *, job: Any, lookups: Lookups | None = None) -> Origin:
        return cls(kind=OriginKind.ANONYMIZATION, source="anonymize", anonymization_job=job, lookups=lookups)

    @classmethod
    def system(cls, *, source: str = "system", user: User | None = None) -> Origin:
        return cls(kind=OriginKind.SYSTEM, source=source, user=user)

    @classmethod
    def upload_batch(cls, *, user: User | None, upload_link: Any = None) -> Origin:
        """A member of a staged ZIP archive: sent by the clinic's member, or by an outside sender's link."""
        if upload_link is not None:
            return cls(kind=OriginKind.UPLOAD_LINK, source="upload-zip", upload_link=upload_link)
        return cls(kind=OriginKind.SYSTEM, source="upload-zip", user=user)

    @classmethod
    def rebuild(cls) -> Origin:
        return cls(kind=OriginKind.REBUILD, source="rebuild")

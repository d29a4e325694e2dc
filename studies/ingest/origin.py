"""Who or what sent an instance: the typed origin every way in passes to ingest instead of a request.

The audit needs who acts (a person, a token, a link, a node or a job, with the client's address): that is
the origin's ``actor``, a ``tenants.audit.Actor`` like every other service takes, so the request is read
for the audit in one place (``Actor.from_request``). Beside it an ``Origin`` says which door the
instance came through, and carries what anonymize-on-ingest looks up (the API token, the upload link or
the DICOM node whose rule applies); so services never see an ``HttpRequest``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from django.http import HttpRequest

from studies.ingest.lookups import Lookups
from tenants.audit import Actor
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
    """Who or what sent an instance (``actor``, as the audit records it), and through which door."""

    kind: OriginKind
    # The door: "upload", "zip", "dicomweb", "dimse", "anonymize", "rebuild", ...; recorded in the audit.
    source: str
    actor: Actor = field(default_factory=Actor.system)
    # What the ingest rules (anonymize-on-ingest, outside senders) look up; never read for the audit.
    api_token: Any = None
    upload_link: Any = None
    dicom_node: Any = None
    anonymization_job: Any = None

    @property
    def user(self) -> User | None:
        """The person who sent it, if any (a token, a link, a node or a job is no person)."""
        return self.actor.user

    @property
    def ip_address(self) -> str | None:
        return self.actor.ip_address
    # The sender's stream (one C-STORE association, one job): lookups its files may share for a few
    # seconds (studies.ingest.lookups); None looks everything up afresh.
    lookups: Lookups | None = field(default=None, compare=False, repr=False)

    @property
    def actor_label(self) -> str:
        """The label the audit trail records for this origin (never patient data)."""
        return self.actor.audit_label()

    @classmethod
    def from_request(cls, request: HttpRequest, *, source: str) -> Origin:
        """The origin of a web request: who acts (``Actor.from_request``), and its token or upload link."""
        token = getattr(request, "api_token", None)
        link = getattr(request, "upload_link", None)
        kind = (
            OriginKind.UPLOAD_LINK
            if link is not None
            else (OriginKind.API_TOKEN if token is not None else OriginKind.USER)
        )
        return cls(kind=kind, source=source, actor=Actor.from_request(request), api_token=token, upload_link=link)

    @classmethod
    def dicom(cls, *, node: Any, address: str | None = None, lookups: Lookups | None = None) -> Origin:
        return cls(
            kind=OriginKind.DICOM_NODE, source="dimse", dicom_node=node,
            actor=Actor(label=f"dicom:{node.ae_title}", ip_address=address or None), lookups=lookups,
        )

    @classmethod
    def migration(cls, *, node: Any) -> Origin:
        """An instance pulled from an old archive by a migration job (studies.outbound)."""
        return cls(
            kind=OriginKind.DICOM_NODE, source="migration", dicom_node=node, actor=Actor(label=f"dicom:{node.ae_title}")
        )

    @classmethod
    def migration_dicomweb(cls, *, job: Any) -> Origin:
        """An instance pulled from a DICOMweb source by a migration job (its URL is in the job, not here)."""
        return cls(kind=OriginKind.MIGRATION, source="migration", actor=Actor.system(f"migration:{job.uuid}"))

    @classmethod
    def anonymization(cls, *, job: Any = None, user: User | None = None, lookups: Lookups | None = None) -> Origin:
        """Results of an anonymization job (named by the person responsible, when one is given)."""
        return cls(
            kind=OriginKind.ANONYMIZATION, source="anonymize", anonymization_job=job,
            actor=Actor(user=user, label="anonymization job"), lookups=lookups,
        )

    @classmethod
    def system(cls, *, source: str = "system", user: User | None = None) -> Origin:
        return cls(kind=OriginKind.SYSTEM, source=source, actor=Actor(user=user, label="system"))

    @classmethod
    def upload_batch(cls, *, user: User | None, upload_link: Any = None) -> Origin:
        """A member of a staged ZIP archive: sent by the clinic's member, or by an outside sender's link."""
        if upload_link is not None:
            return cls(
                kind=OriginKind.UPLOAD_LINK, source="upload-zip", upload_link=upload_link,
                actor=Actor(label=f"upload_link:{upload_link.uuid}"),
            )
        return cls.system(source="upload-zip", user=user)

    @classmethod
    def rebuild(cls) -> Origin:
        return cls(kind=OriginKind.REBUILD, source="rebuild", actor=Actor.system("rebuild"))

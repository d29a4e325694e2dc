"""Instances held in quarantine (``studies.admission``): list them, file them into their study, discard them.

A held instance's encrypted object sits in the primary store and is copied to the replica like any
instance's (``studies.quarantine.tasks.quarantined_replicate``, swept by ``studies.ingest.tasks.intake_sweep``), so holding an image
never risks losing it. Owners and admins decide: *file* it into the study its Study Instance UID names
(when they know it is the same patient, say a corrected name), or *discard* it (its object is erased
and the quota given back). Both are audited.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from functools import partial

from django.conf import settings
from django.core.cache import cache
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from portal.exceptions import PortalError
from studies import admission, dicom, ingest
from studies.archive import objects
from studies.archive.errors import ObjectMissing
from studies.backup import replication
from studies.backup import tasks as backup_tasks
from studies.errors import InvalidDicom, StudyBeingPurged
from studies.ingest import hooks as ingest_hooks
from studies.models import Instance, QuarantinedInstance, Study
from tenants.audit import Actor, audit_record
from tenants.models import Clinic, Membership, User
from tenants.roles import Role

logger = logging.getLogger(__name__)


def quarantine_list(*, clinic: Clinic) -> QuerySet[QuarantinedInstance]:
    """The clinic's instances still waiting for a decision, newest first."""
    return (
        QuarantinedInstance.objects.for_clinic(clinic)
        .filter(resolved_at__isnull=True)
        .select_related("study__patient", "upload_link")
        .order_by("-received_at")
    )


def quarantine_get(*, clinic: Clinic, held_uuid: uuid.UUID) -> QuarantinedInstance | None:
    return quarantine_list(clinic=clinic).filter(uuid=held_uuid).first()


def quarantined_file(
    *, clinic: Clinic, held: QuarantinedInstance, actor: User | None, by: Actor | None = None
) -> Instance:
    """File a held instance into the study its Study Instance UID names (created if it is gone).

    Its object and quota use stay as they are; a study in the trash is brought back. Raises PortalError
    when it can't be filed (its SOP Instance UID is stored meanwhile, its series is another study's, or its
    Study Instance UID now names another patient's study than the one it was held against: that study is
    recorded, so the page shows it before the next try).
    """
    parsed = _parse_object(clinic=clinic, key=held.object_key)
    stored = objects.StoredObject(held.object_key, held.key_id, held.size_bytes, held.sha256)
    try:
        with transaction.atomic():
            claimed = QuarantinedInstance.objects.for_clinic(clinic).filter(pk=held.pk, resolved_at__isnull=True)
            if not claimed.update(
                resolved_at=timezone.now(), resolved_by=actor, resolution=QuarantinedInstance.Resolution.FILED
            ):
                raise PortalError("This instance was already filed or discarded.")
            study = (
                Study.objects.for_clinic(clinic)
                .select_for_update()
                .select_related("patient")
                .filter(study_instance_uid=parsed.study_instance_uid)
                .first()
            )
            if study is not None and study.pk != held.study_id and not admission.patient_matches(
                study=study, parsed=parsed
            ):
                # The owner decided on the study the page showed (gone since, or none then): never file into
                # another patient's study unseen.
                raise _StudyChanged(study)
            if study is not None and study.deleted_at is not None:
                try:
                    admission.study_restore_from_trash(
                        clinic=clinic, study=study, reason="quarantined instance filed", by=by, actor=actor
                    )
                except StudyBeingPurged as exc:
                    raise PortalError(
                        "Its study is being erased from the trash; file it again in a few minutes."
                    ) from exc
            instance, _ = ingest.instance_index_write(
                clinic=clinic,
                parsed=parsed,
                stored=stored,
                instance_uuid=_object_uuid(held.object_key),
                replicated_at=held.replicated_at,
            )
            audit_record(
                clinic=clinic,
                action="quarantine.filed",
                by=by,
                actor=actor,
                object_type="quarantined_instance",
                object_id=str(held.uuid),
                details={"instance": str(instance.uuid), "study": str(instance.series.study.uuid)},
            )
            # What ingest starts after its commit: replication, and the thumbnail of a series it may begin.
            for hook in ingest_hooks.after_commit_hooks():
                transaction.on_commit(partial(hook, clinic, [instance]), robust=True)
    except _StudyChanged as changed:
        QuarantinedInstance.objects.for_clinic(clinic).filter(pk=held.pk).update(study=changed.study)
        raise PortalError(
            "Its Study Instance UID is now a study of another patient than the page showed: check it and decide "
            "again."
        ) from None
    except IntegrityError as exc:
        raise PortalError("An instance with this SOP Instance UID is stored meanwhile: discard this copy.") from exc
    except InvalidDicom as exc:
        raise PortalError(f"It can't be filed: {exc.message} Discard it instead.") from exc
    return instance


class _StudyChanged(Exception):
    def __init__(self, study: Study) -> None:
        self.study = study


def quarantined_discard(
    *, clinic: Clinic, held: QuarantinedInstance, actor: User | None, by: Actor | None = None
) -> None:
    """Erase a held instance: its object in both stores, its quota use. Raises PortalError if decided already."""
    with transaction.atomic():
        claimed = QuarantinedInstance.objects.for_clinic(clinic).filter(pk=held.pk, resolved_at__isnull=True)
        if not claimed.update(
            resolved_at=timezone.now(), resolved_by=actor, resolution=QuarantinedInstance.Resolution.DISCARDED
        ):
            raise PortalError("This instance was already filed or discarded.")
        # Erased before the decision commits: a store that fails leaves the entry held (to discard again),
        # never decided with both copies left behind. A commit that fails after it leaves an entry whose
        # object is gone: filing it is refused, discarding it again succeeds. Before the quota's update, so
        # the clinic's row (which every ingest batch locks) is not held while the store answers.
        with contextlib.suppress(ObjectMissing):
            objects.object_delete(clinic=clinic, key=held.object_key)
        ingest.quota_release(clinic=clinic, size_bytes=held.size_bytes)
        audit_record(
            clinic=clinic,
            action="quarantine.discarded",
            by=by,
            actor=actor,
            object_type="quarantined_instance",
            object_id=str(held.uuid),
            details={"reason": held.reason},
        )
        # The replica copy goes with the replica's own credentials, on the replica-admin queue.
        transaction.on_commit(
            partial(backup_tasks.replica_purge.delay, clinic_id=clinic.pk, key=held.object_key), robust=True
        )


# Owners and admins hear about held instances at most this often per clinic, not once per file.
NOTIFY_INTERVAL_SECONDS = 600


def quarantine_notify(*, clinic: Clinic) -> bool:
    """E-mail the clinic's owners and admins that instances wait for review; False when told recently.

    The mail names no patient: it points to the Quarantine page, which shows them to those allowed.
    """
    if not cache.add(f"quarantine-notify:{clinic.pk}", 1, NOTIFY_INTERVAL_SECONDS):
        return False
    count = quarantine_list(clinic=clinic).count()
    if not count:
        return False
    recipients = sorted(
        set(
            Membership.objects.for_clinic(clinic)
            .filter(role__in=[Role.OWNER, Role.ADMIN])
            .values_list("user__email", flat=True)
        )
    )
    body = render_to_string(
        "emails/quarantine_held.txt",
        {"clinic": clinic, "count": count, "path": reverse("studies:quarantine", kwargs={"clinic_slug": clinic.slug})},
    )
    subject, _, text = body.partition("\n")
    send_mail(subject.strip(), text.strip(), settings.DEFAULT_FROM_EMAIL, recipients)
    return True


def quarantine_destroy_all(*, clinic: Clinic) -> int:
    """Erase every held instance of a clinic whose data is destroyed: objects in both stores, then rows.

    Runs on the replica-admin worker (``billing.services.clinic_data_destroy``), before the studies are
    purged: the open entries are claimed first, so none can be filed into a study once the purge has passed
    it (one filed before the claim is an instance of a study the purge then erases). Returns how many.
    """
    with transaction.atomic():
        claimed = dict(
            QuarantinedInstance.objects.for_clinic(clinic).select_for_update().filter(resolved_at__isnull=True)
            .values_list("pk", "size_bytes")
        )
        QuarantinedInstance.objects.for_clinic(clinic).filter(pk__in=claimed).update(
            resolved_at=timezone.now(), resolution=QuarantinedInstance.Resolution.DISCARDED
        )
        ingest.quota_release(clinic=clinic, size_bytes=sum(claimed.values()))
    held = list(QuarantinedInstance.objects.for_clinic(clinic).values_list("object_key", "resolution"))
    for key, resolution in held:
        if resolution == QuarantinedInstance.Resolution.FILED:
            continue  # its object is an instance's now, purged with its study
        for store in ("primary", "replica"):
            with contextlib.suppress(ObjectMissing):
                objects.object_delete(clinic=clinic, key=key, store=store)
    QuarantinedInstance.objects.for_clinic(clinic).delete()
    return len(held)


def quarantined_replicate(*, held: QuarantinedInstance) -> bool:
    """Copy a held instance's object to the replica; False when done already or decided meanwhile."""
    if held.replicated_at is not None or held.resolution == QuarantinedInstance.Resolution.DISCARDED:
        return False
    replication.object_copy(key=held.object_key)
    now = timezone.now()
    QuarantinedInstance.objects.for_clinic(held.clinic_id).filter(pk=held.pk, replicated_at=None).update(
        replicated_at=now
    )
    # Filed meanwhile: its instance row took the (then empty) replication mark; give it the copy's.
    Instance.objects.for_clinic(held.clinic_id).filter(object_key=held.object_key, replicated_at=None).update(
        replicated_at=now
    )
    return True


def _object_uuid(key: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(key.rsplit("/", 1)[-1])
    except ValueError:
        return None


def _parse_object(*, clinic: Clinic, key: str) -> dicom.ParsedInstance:
    fd, path = tempfile.mkstemp(prefix="quarantine-", suffix=".dcm")
    try:
        with os.fdopen(fd, "wb") as local, contextlib.closing(objects.object_open(clinic=clinic, key=key)) as source:
            shutil.copyfileobj(source, local, 1024 * 1024)
        return dicom.parse_instance(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

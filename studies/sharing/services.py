"""Share links, patient access codes and upload links: create, resolve, PIN checks, revoke, extend, log."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.auth.hashers import check_password, make_password
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from portal.exceptions import PortalError
from studies.models import Study
from studies.sharing.models import Share, ShareAccess, ShareKind, UploadLink
from tenants.audit import Actor, audit_record
from tenants.models import Clinic, Membership, User
from tenants.roles import Role
from tenants.secrets import new_secret, secret_hash

if TYPE_CHECKING:
    from studies.anonymize.models import AnonymizationProject

logger = logging.getLogger(__name__)

MAX_EXPIRY_DAYS = 90
# Far below the column's limit (a PositiveIntegerField), and more opens than any real share needs.
MAX_OPENS = 100_000
DEFAULT_EXPIRY_DAYS = 7
PIN_ATTEMPTS = 5
PIN_LOCK = timedelta(minutes=15)
# Patient access codes are typed by hand: no look-alike characters.
ACCESS_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
ACCESS_CODE_LENGTH = 12


class ShareLocked(PortalError):
    status = HTTPStatus.TOO_MANY_REQUESTS
    code = "locked"


def _check_expiry(days: int) -> int:
    if not 1 <= days <= MAX_EXPIRY_DAYS:
        raise PortalError(f"A link expires after 1 to {MAX_EXPIRY_DAYS} days.")
    return days


def _check_pin(pin: str) -> str:
    pin = (pin or "").strip()
    if pin and not (pin.isdigit() and 4 <= len(pin) <= 12):
        raise PortalError("A PIN is 4 to 12 digits.")
    return pin


@dataclass(frozen=True)
class NewShare:
    share: Share
    token: str
    access_code: str = ""


def _format_access_code(code: str) -> str:
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


def access_code_normalize(code: str) -> str:
    return "".join(ch for ch in code.upper() if ch in ACCESS_CODE_ALPHABET)


def share_studies_check(*, studies: list[Study]) -> None:
    """Refuse a link over no study or over the studies of several patients.

    Raises PortalError; the page and the REST API give its message.
    """
    if not studies:
        raise PortalError("Choose at least one study to share.")
    if len({study.patient_id for study in studies}) > 1:
        raise PortalError("A link shares the studies of one patient; make one link per patient.")


@transaction.atomic
def share_create(
    *,
    clinic: Clinic,
    studies: list[Study],
    created_by: User | None,
    expires_in_days: int = DEFAULT_EXPIRY_DAYS,
    pin: str = "",
    allow_download: bool = False,
    note: str = "",
    recipient_email: str = "",
    max_opens: int | None = None,
    kind: str = ShareKind.LINK,
    share_url_builder: object = None,
    by: Actor | None = None,
) -> NewShare:
    """Create a share link; its token (and a patient's access code) is returned here once.

    Raises PortalError for an expiry outside 1-90 days, a malformed PIN, no studies, studies of
    several patients, or a patient access code without a PIN.
    """
    studies = [s for s in studies if s.clinic_id == clinic.pk and s.deleted_at is None]
    share_studies_check(studies=studies)
    _check_expiry(expires_in_days)
    pin = _check_pin(pin)
    if kind == ShareKind.PATIENT and not pin:
        raise PortalError("A patient access code needs a PIN.")
    if max_opens is not None and not 1 <= max_opens <= MAX_OPENS:
        raise PortalError(f"The maximum number of opens must be between 1 and {MAX_OPENS:,}.")
    access_code = "".join(secrets.choice(ACCESS_CODE_ALPHABET) for _ in range(ACCESS_CODE_LENGTH)) if kind == ShareKind.PATIENT else ""
    token = patient_token(access_code) if access_code else new_secret()
    share = Share.objects.create(
        clinic=clinic,
        kind=kind,
        token_hash=secret_hash(token),
        created_by=created_by,
        expires_at=timezone.now() + timedelta(days=expires_in_days),
        pin_hash=make_password(pin) if pin else "",
        allow_download=allow_download or kind == ShareKind.PATIENT,
        note=note.strip()[:500],
        recipient_email=recipient_email.strip(),
        max_opens=max_opens,
    )
    share.studies.set(studies)
    audit_record(clinic=clinic, action="share.created", by=by, actor=created_by, object_type="share",
                 object_id=str(share.uuid),
                 details={"studies": [str(s.uuid) for s in studies], "expires_in_days": expires_in_days,
                          "pin": bool(pin), "allow_download": share.allow_download, "kind": kind})
    return NewShare(share=share, token=token, access_code=_format_access_code(access_code) if access_code else "")


def share_email_recipient(*, share: Share, url: str) -> None:
    """E-mail the link (never the PIN, which the sender passes on another way) to the recipient."""
    if not share.recipient_email:
        return
    body = render_to_string("emails/share_link.txt", {"share": share, "url": url, "clinic": share.clinic})
    subject, _, text = body.partition("\n")
    send_mail(subject.strip(), text.strip(), settings.DEFAULT_FROM_EMAIL, [share.recipient_email])


def share_revoke(*, share: Share, user: User | None, by: Actor | None = None) -> Share:
    if share.revoked_at is None:
        Share.objects.filter(pk=share.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        share.refresh_from_db()
        audit_record(clinic=share.clinic, action="share.revoked", by=by, actor=user, object_type="share",
                     object_id=str(share.uuid))
    return share


def share_extend(*, share: Share, days: int, user: User | None, by: Actor | None = None) -> Share:
    """Set the link to expire ``days`` from now (at most 90); a revoked link stays revoked."""
    if share.revoked_at is not None:
        raise PortalError("A revoked link cannot be extended; create a new one.")
    _check_expiry(days)
    share.expires_at = timezone.now() + timedelta(days=days)
    share.save(update_fields=["expires_at"])
    audit_record(clinic=share.clinic, action="share.extended", by=by, actor=user, object_type="share",
                 object_id=str(share.uuid), details={"days": days})
    return share


def share_resolve(*, token: str) -> Share | None:
    """Return the usable share for a token, or None: unknown, expired, revoked and used-up look the same."""
    if not token or len(token) > 128:
        return None
    share = Share.objects.select_related("clinic").filter(token_hash=secret_hash(token)).first()
    if share is None or share.revoked_at is not None or share.is_expired:
        return None
    return share


def patient_token(access_code: str) -> str:
    """The link token of a patient access code.

    Derived with the site secret, so that a patient who types the short code on the access page reaches
    the same link as the QR code; only the token's hash is stored. The code alone opens nothing: the
    link also asks for the PIN, and five wrong PINs lock it.
    """
    digest = hmac.new(settings.SECRET_KEY.encode(), b"patient-access:" + access_code_normalize(access_code).encode(),
                      hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def share_log(
    *, share: Share, action: str, by: Actor | None = None, study: Study | None = None,
    result: str = "success",
) -> None:
    """Write one access (time, address, user agent, what) to the share's log and the clinic's audit trail."""
    share_access_record(share=share, action=action, by=by, study=study)
    audit_record(clinic=share.clinic, action=f"share.{action}", by=by, actor_label=f"share:{share.uuid}",
                 object_type="study" if study else "share", object_id=str(study.uuid if study else share.uuid),
                 result=result)


def _creator_recipients(link: Share | UploadLink) -> list[str]:
    """The link's creator's address while they are a member of its clinic: mails about a link name its
    note (which may name a patient), and a removed member must not go on getting them."""
    creator = link.created_by
    if creator is None or not Membership.objects.for_clinic(link.clinic).filter(user=creator).exists():
        return []
    return [creator.email]


def _notify_creator_locked(link: Share | UploadLink, base_url: str) -> None:
    """Tell the link's creator which link was locked, with the address of its page on the portal."""
    recipients = _creator_recipients(link)
    if not recipients:
        return
    if isinstance(link, UploadLink):
        template = "emails/upload_link_locked.txt"
        path = reverse("sharing:list", kwargs={"clinic_slug": link.clinic.slug})
    else:
        template = "emails/share_locked.txt"
        path = reverse("sharing:detail", kwargs={"clinic_slug": link.clinic.slug, "share_uuid": link.uuid})
    lock = duration_text(_lock_left(link))
    body = render_to_string(template, {"link": link, "clinic": link.clinic, "url": base_url.rstrip("/") + path,
                                       "lock": lock})
    subject, _, text = body.partition("\n")
    send_mail(subject.strip(), text.strip(), settings.DEFAULT_FROM_EMAIL, recipients)


def pin_lock_duration(failures: int) -> timedelta:
    """How long a link locks once it has taken ``failures`` wrong PINs in a row (a multiple of PIN_ATTEMPTS).

    15 minutes, doubled at each lock after it until a right PIN: at a flat 15 minutes a 4-digit PIN
    fell to a patient guesser in about ten days, well within a 90-day link; doubling leaves about 65
    guesses in 90 days, while a recipient who mistypes waits 15 minutes, then 30.
    """
    return PIN_LOCK * 2 ** min(max(failures // PIN_ATTEMPTS - 1, 0), 20)


def duration_text(duration: timedelta) -> str:
    """``15 minutes``, ``2 hours``, ``3 days``: as a lock's length is told to the person at the door."""
    minutes = max(1, round(duration.total_seconds() / 60))
    for size, unit in ((24 * 60, "day"), (60, "hour")):
        if minutes >= 2 * size:
            count = round(minutes / size)
            return f"{count} {unit}s"
    return f"{minutes} minute{'' if minutes == 1 else 's'}"


def _lock_left(link: Share | UploadLink) -> timedelta:
    return (link.locked_until - timezone.now()) if link.locked_until else PIN_LOCK


def locked_message(*, link: Share | UploadLink) -> str:
    return f"Too many wrong PINs: this link is locked for {duration_text(_lock_left(link))}."


def _pin_check(model: type[Share] | type[UploadLink], obj: Share | UploadLink, pin: str, base_url: str) -> bool:
    """Check a PIN against a share or upload link; five failures in a row lock it (pin_lock_duration) and
    tell its creator.

    Raises ShareLocked while locked (the PIN is not even compared then). ``base_url`` starts the
    address of the link's page in the e-mail (``scheme://host``; without it the address is a path).
    """
    with transaction.atomic():
        locked = model.objects.select_for_update().get(pk=obj.pk)
        if locked.is_locked:
            raise ShareLocked(locked_message(link=locked))
        if check_password(pin or "", locked.pin_hash):
            if locked.failed_pin_count:
                model.objects.filter(pk=obj.pk).update(failed_pin_count=0)
            return True
        # Counted until a right PIN, across locks: each lock is longer than the one before.
        failures = locked.failed_pin_count + 1
        changes: dict[str, object] = {"failed_pin_count": failures}
        if failures % PIN_ATTEMPTS == 0:
            locked.locked_until = timezone.now() + pin_lock_duration(failures)
            changes["locked_until"] = locked.locked_until
        model.objects.filter(pk=obj.pk).update(**changes)
    if failures % PIN_ATTEMPTS == 0:
        _notify_creator_locked(locked, base_url)
        raise ShareLocked(locked_message(link=locked))
    return False


def wrong_pin_message(*, link: Share | UploadLink) -> str:
    failures = type(link).objects.filter(pk=link.pk).values_list("failed_pin_count", flat=True).first() or 0
    left = PIN_ATTEMPTS - failures % PIN_ATTEMPTS
    lock = duration_text(pin_lock_duration(failures + left))
    return f"Wrong PIN. {left} {'try' if left == 1 else 'tries'} left before the link is locked for {lock}."


def share_pin_check(*, share: Share, pin: str, by: Actor | None = None, base_url: str = "") -> bool:
    try:
        ok = _pin_check(Share, share, pin, base_url)
    except ShareLocked:
        share_log(share=share, action="pin_locked", by=by, result="denied")
        raise
    share_log(share=share, action="pin_ok" if ok else "pin_failed", by=by,
              result="success" if ok else "failure")
    return ok


def share_open(*, share: Share, by: Actor | None = None) -> bool:
    """Count an open of the link; False when the link's maximum number of opens is used up."""
    opens = Share.objects.filter(pk=share.pk)
    if share.max_opens is not None:
        opens = opens.filter(open_count__lt=F("max_opens"))
    if not opens.update(open_count=F("open_count") + 1):
        return False
    share_log(share=share, action="opened", by=by)
    return True


def share_studies(*, share: Share) -> list[Study]:
    """The shared studies still in the clinic: a deleted study disappears from its links at once."""
    return list(
        share.studies.filter(clinic=share.clinic, deleted_at__isnull=True).select_related("patient").order_by("-study_date")
    )


def share_access_record(
    *, share: Share, action: str, by: Actor | None = None, study: Study | None = None
) -> ShareAccess:
    """Write one access to the share's log (the link's page) only: for callers that audit it themselves.

    The share's DICOMweb views write their own audit entries (``dicomweb.retrieve``, naming the link), so
    ``share_log`` would record each read in the clinic's audit trail twice.
    """
    return ShareAccess.objects.create(
        clinic=share.clinic, share=share, action=action[:32], study=study,
        ip_address=by.ip_address if by is not None else None, user_agent=by.user_agent if by is not None else "",
    )


# --- upload links -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewUploadLink:
    link: UploadLink
    token: str


def upload_link_create(
    *, clinic: Clinic, created_by: User | None, expires_in_days: int = DEFAULT_EXPIRY_DAYS, pin: str = "",
    note: str = "", anonymize_project: AnonymizationProject | None = None, by: Actor | None = None,
) -> NewUploadLink:
    _check_expiry(expires_in_days)
    pin = _check_pin(pin)
    token = new_secret()
    link = UploadLink.objects.create(
        clinic=clinic, token_hash=secret_hash(token), created_by=created_by,
        expires_at=timezone.now() + timedelta(days=expires_in_days), pin_hash=make_password(pin) if pin else "",
        note=note.strip()[:500], anonymize_project=anonymize_project,
    )
    audit_record(clinic=clinic, action="upload_link.created", by=by, actor=created_by,
                 object_type="upload_link", object_id=str(link.uuid), details={"pin": bool(pin)})
    return NewUploadLink(link=link, token=token)


def upload_link_resolve(*, token: str) -> UploadLink | None:
    if not token or len(token) > 128:
        return None
    link = UploadLink.objects.select_related("clinic", "anonymize_project").filter(token_hash=secret_hash(token)).first()
    return link if link is not None and link.is_active else None


def upload_link_pin_check(*, link: UploadLink, pin: str, base_url: str = "") -> bool:
    return _pin_check(UploadLink, link, pin, base_url)


def upload_link_revoke(*, link: UploadLink, user: User | None, by: Actor | None = None) -> None:
    if UploadLink.objects.filter(pk=link.pk, revoked_at__isnull=True).update(revoked_at=timezone.now()):
        audit_record(clinic=link.clinic, action="upload_link.revoked", by=by, actor=user,
                     object_type="upload_link", object_id=str(link.uuid))


# The clinic hears about arrivals through a link at most this often, not once per file.
UPLOAD_NOTIFY_INTERVAL_SECONDS = 600


def upload_link_received(*, link: UploadLink, by: Actor | None = None) -> None:
    """Count a file that arrived through the link and tell the clinic (owners, admins, the link's creator).

    One e-mail per upload: the first file claims the notice with a conditional update, so parallel
    requests in several web processes (each with its own cache) cannot both send it.
    """
    UploadLink.objects.filter(pk=link.pk).update(received_count=F("received_count") + 1)
    now = timezone.now()
    quiet_since = now - timedelta(seconds=UPLOAD_NOTIFY_INTERVAL_SECONDS)
    claimed = UploadLink.objects.filter(
        Q(last_notified_at__isnull=True) | Q(last_notified_at__lt=quiet_since), pk=link.pk
    ).update(last_notified_at=now)
    if not claimed:
        return
    audit_record(clinic=link.clinic, action="upload_link.received", by=by,
                 actor_label=f"upload_link:{link.uuid}", object_type="upload_link", object_id=str(link.uuid))
    recipients = set(
        Membership.objects.for_clinic(link.clinic).filter(Q(role__in=[Role.OWNER, Role.ADMIN]))
        .values_list("user__email", flat=True)
    )
    recipients.update(_creator_recipients(link))
    body = render_to_string("emails/upload_link_received.txt", {"link": link, "clinic": link.clinic})
    subject, _, text = body.partition("\n")
    send_mail(subject.strip(), text.strip(), settings.DEFAULT_FROM_EMAIL, sorted(recipients))

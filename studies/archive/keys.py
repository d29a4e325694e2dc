"""Envelope keys: one data key per clinic, wrapped by a master key that lives outside the database.

``settings.MASTER_KEYS`` is ``id:base64(32 bytes)[,id:base64...]``; the first is current and wraps new
and rotated clinic keys, the others stay usable for unwrapping until they are removed. An entry may
instead name an AWS KMS key: ``[id:]aws-kms://arn:aws:kms:<region>:<account>:key/<key id>`` or
``[id:]kms://<key id or alias>?endpoint_url=...&region_name=...``; KMS then wraps and unwraps (the
key never leaves KMS). A local clinic key is wrapped with AES-256-GCM, whose associated data binds it
to its clinic and key id; a KMS-wrapped key carries the same binding as its encryption context. So a
wrapped key moved to another clinic's row does not unwrap. Each wrapped key is also published as a small JSON
document at ``clinics/<clinic uuid>/keys/<key id>`` in both stores, so that the replica plus a master
key is enough to decrypt every object (docs/encryption.md).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, urlparse

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction

from studies.archive import stores
from studies.archive.errors import ArchiveError, KeyUnavailable, ObjectCorrupt, StorageUnavailable
from studies.models import ClinicKey
from tenants.models import Clinic

logger = logging.getLogger(__name__)

KEY_DOCUMENT_FORMAT = "pacs-portal-clinic-key"
KEY_DOCUMENT_VERSION = 1
WRAP_AAD_LABEL = b"pacs-portal clinic key v1\x00"
WRAP_NONCE_SIZE = 12
CACHE_SECONDS = 300
_MASTER_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


# --- master keyring ---------------------------------------------------------------------------

_KMS_SCHEMES = ("aws-kms://", "kms://")
_KMS_OPTIONS = {"endpoint_url", "region_name"}


@dataclass(frozen=True)
class MasterKey:
    """One entry of MASTER_KEYS: a local AES-256 key, or a key held by AWS KMS."""

    key_id: str
    secret: bytes = field(default=b"", repr=False)
    kms_key: str = ""  # KMS key id, ARN or alias; empty for a local key
    kms_endpoint_url: str = ""
    kms_region_name: str = ""

    @property
    def is_kms(self) -> bool:
        return bool(self.kms_key)

    def wrap(self, *, clinic_uuid: uuid.UUID, key_id: str, clinic_key: bytes) -> bytes:
        if self.is_kms:
            return _kms_wrap(self, clinic_uuid=clinic_uuid, key_id=key_id, plain=clinic_key)
        nonce = os.urandom(WRAP_NONCE_SIZE)
        return nonce + AESGCM(self.secret).encrypt(nonce, clinic_key, _wrap_aad(clinic_uuid, key_id))

    def unwrap(self, *, clinic_uuid: uuid.UUID, key_id: str, wrapped: bytes) -> bytes:
        if self.is_kms:
            return _kms_unwrap(self, clinic_uuid=clinic_uuid, key_id=key_id, wrapped=wrapped)
        try:
            return AESGCM(self.secret).decrypt(
                wrapped[:WRAP_NONCE_SIZE], wrapped[WRAP_NONCE_SIZE:], _wrap_aad(clinic_uuid, key_id)
            )
        except (InvalidTag, ValueError):
            raise _altered(key_id) from None


def _altered(key_id: str) -> KeyUnavailable:
    return KeyUnavailable(
        f"Clinic key {key_id} does not unwrap with its master key: the wrapped key was altered, "
        "moved from another clinic, or the master key with that id is not the one that wrapped it."
    )


def _kms_entry(key_id: str, uri: str) -> MasterKey:
    parsed = urlparse(uri)
    options = {name: values[-1] for name, values in parse_qs(parsed.query).items()}
    unknown = set(options) - _KMS_OPTIONS
    if unknown:
        raise ImproperlyConfigured(f"Unknown option(s) in the KMS master key URI: {', '.join(sorted(unknown))}.")
    if uri.startswith("aws-kms://"):
        kms_key = uri[len("aws-kms://") :].split("?", 1)[0]
        arn = kms_key.split(":")
        if len(arn) < 6 or arn[0] != "arn" or arn[2] != "kms":
            raise ImproperlyConfigured("An aws-kms:// master key must name a key ARN: aws-kms://arn:aws:kms:...")
        options.setdefault("region_name", arn[3])
    else:
        kms_key = (parsed.netloc + parsed.path).strip("/")
    if not kms_key:
        raise ImproperlyConfigured("A KMS master key URI must name the KMS key.")
    if not key_id:
        # No id given: derive a stable one from the KMS key (ARNs hold ':' and '/', ids may not).
        key_id = ("kms-" + re.sub(r"[^A-Za-z0-9._-]", "-", kms_key.rsplit("/", 1)[-1].rsplit(":", 1)[-1]))[:64]
    return MasterKey(
        key_id=key_id,
        kms_key=kms_key,
        kms_endpoint_url=options.get("endpoint_url", ""),
        kms_region_name=options.get("region_name", ""),
    )


def _parse_entry(item: str) -> MasterKey:
    if item.lower().startswith(_KMS_SCHEMES):
        return _kms_entry("", item)
    key_id, sep, encoded = item.partition(":")
    key_id = key_id.strip()
    if not sep or not _MASTER_ID_RE.match(key_id):
        raise ImproperlyConfigured(
            "MASTER_KEYS must be 'id:base64key[,id:base64key...]' (or KMS key URIs) with ids of letters, "
            "digits, '.', '_' or '-'."
        )
    encoded = encoded.strip()
    if encoded.lower().startswith(_KMS_SCHEMES):
        return _kms_entry(key_id, encoded)
    if encoded.lower().startswith("gcp-kms:"):
        raise ImproperlyConfigured("Only AWS KMS master keys are supported (aws-kms:// or kms://).")
    try:
        secret = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ImproperlyConfigured(f"Master key {key_id!r} in MASTER_KEYS is not valid base64.") from None
    if len(secret) != 32:
        raise ImproperlyConfigured(f"Master key {key_id!r} in MASTER_KEYS must be 32 bytes (AES-256).")
    return MasterKey(key_id=key_id, secret=secret)


@lru_cache(maxsize=8)
def _parse_keyring(value: str) -> tuple[MasterKey, ...]:
    entries: list[MasterKey] = []
    # Commas, or newlines in a mounted secret file (MASTER_KEYS_FILE), separate the entries.
    for item in re.split(r"[,\s]+", value):
        item = item.strip()
        if not item:
            continue
        entry = _parse_entry(item)
        if any(existing.key_id == entry.key_id for existing in entries):
            raise ImproperlyConfigured(f"Master key id {entry.key_id!r} appears twice in MASTER_KEYS.")
        entries.append(entry)
    if not entries:
        raise ImproperlyConfigured("MASTER_KEYS holds no key.")
    return tuple(entries)


def master_keyring() -> dict[str, MasterKey]:
    """Return the configured master keys by id, the current one first."""
    return {entry.key_id: entry for entry in _parse_keyring(settings.MASTER_KEYS)}


def master_key_current() -> tuple[str, MasterKey]:
    """Return (id, key) of the master key that wraps new and rotated clinic keys."""
    entry = _parse_keyring(settings.MASTER_KEYS)[0]
    return entry.key_id, entry


def master_key_generate(key_id: str) -> str:
    """Return a new ``id:base64key`` entry for MASTER_KEYS."""
    if not _MASTER_ID_RE.match(key_id):
        raise ValueError("A master key id is 1-64 letters, digits, '.', '_' or '-'.")
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


# --- AWS KMS ----------------------------------------------------------------------------------

_kms_clients: dict[tuple[str, str, str], Any] = {}
_kms_lock = threading.Lock()


def _kms_client(entry: MasterKey) -> Any:
    import boto3
    from botocore.config import Config

    access_key = settings.KMS_ACCESS_KEY_ID or None
    cache_key = (entry.kms_endpoint_url, entry.kms_region_name, access_key or "")
    with _kms_lock:
        client = _kms_clients.get(cache_key)
        if client is None:
            client = boto3.client(
                "kms",
                endpoint_url=entry.kms_endpoint_url or None,
                region_name=entry.kms_region_name or None,
                # Own credentials when given; otherwise boto3's chain (an instance or task role).
                aws_access_key_id=access_key,
                aws_secret_access_key=settings.KMS_SECRET_ACCESS_KEY or None,
                # Fail fast: an upload waits on this, and a KMS outage must surface as a clear error.
                config=Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}),
            )
            _kms_clients[cache_key] = client
        return client


def _kms_context(clinic_uuid: uuid.UUID, key_id: str) -> dict[str, str]:
    return {"purpose": WRAP_AAD_LABEL.rstrip(b"\x00").decode(), "clinic": str(clinic_uuid), "key_id": key_id}


def _kms_call(entry: MasterKey, key_id: str, operation: str, **arguments: Any) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return getattr(_kms_client(entry), operation)(KeyId=entry.kms_key, **arguments)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in {"InvalidCiphertextException", "IncorrectKeyException"}:
            raise _altered(key_id) from None
        raise KeyUnavailable(
            f"KMS refused to {operation} clinic key {key_id} with master key {entry.key_id!r} ({code or 'error'}): "
            "nothing was stored or changed; fix the KMS key or its permissions and retry."
        ) from exc
    except (BotoCoreError, OSError) as exc:
        raise KeyUnavailable(
            f"KMS cannot be reached to {operation} clinic key {key_id} ({type(exc).__name__}): nothing was "
            "stored or changed; retry once KMS answers again."
        ) from exc


def _kms_wrap(entry: MasterKey, *, clinic_uuid: uuid.UUID, key_id: str, plain: bytes) -> bytes:
    answer = _kms_call(entry, key_id, "encrypt", Plaintext=plain, EncryptionContext=_kms_context(clinic_uuid, key_id))
    return bytes(answer["CiphertextBlob"])


def _kms_unwrap(entry: MasterKey, *, clinic_uuid: uuid.UUID, key_id: str, wrapped: bytes) -> bytes:
    answer = _kms_call(
        entry, key_id, "decrypt", CiphertextBlob=wrapped, EncryptionContext=_kms_context(clinic_uuid, key_id)
    )
    return bytes(answer["Plaintext"])


# --- wrapping ---------------------------------------------------------------------------------


def _wrap_aad(clinic_uuid: uuid.UUID, key_id: str) -> bytes:
    return WRAP_AAD_LABEL + clinic_uuid.bytes + key_id.encode("ascii")


def key_wrap(*, master_key: MasterKey, clinic_uuid: uuid.UUID, key_id: str, clinic_key: bytes) -> bytes:
    """Wrap a clinic key: locally 12-byte random nonce || AES-256-GCM ciphertext and tag; else by KMS."""
    return master_key.wrap(clinic_uuid=clinic_uuid, key_id=key_id, clinic_key=clinic_key)


def key_unwrap(*, master_key: MasterKey, clinic_uuid: uuid.UUID, key_id: str, wrapped: bytes) -> bytes:
    """Unwrap a clinic key; raises KeyUnavailable if it was not wrapped for this clinic and id, or KMS fails."""
    plain = master_key.unwrap(clinic_uuid=clinic_uuid, key_id=key_id, wrapped=bytes(wrapped))
    if len(plain) != 32:
        raise KeyUnavailable(f"Clinic key {key_id} does not hold a 32-byte key.")
    return plain


def _master_key(master_key_id: str, key_id: str) -> MasterKey:
    keyring = master_keyring()
    if master_key_id not in keyring:
        raise KeyUnavailable(
            f"Clinic key {key_id} is wrapped by master key {master_key_id!r}, which is not in MASTER_KEYS. "
            f"Put it back in MASTER_KEYS (after the current key) and run `manage.py rotate_master_key` "
            "before removing it."
        )
    return keyring[master_key_id]


def _row_unwrap(row: ClinicKey) -> bytes:
    return key_unwrap(
        master_key=_master_key(row.master_key_id, row.key_id),
        clinic_uuid=row.clinic.uuid,
        key_id=row.key_id,
        wrapped=bytes(row.wrapped_key),
    )


# --- in-process cache of unwrapped keys -------------------------------------------------------


@dataclass
class _Cached:
    clinic_id: int
    key: bytes
    expires_at: float


_cache: dict[str, _Cached] = {}
_primary_by_clinic: dict[int, tuple[str, float]] = {}
_cache_lock = threading.Lock()


def key_cache_clear() -> None:
    """Forget every unwrapped key (tests, and after removing a master key from a running process)."""
    with _cache_lock:
        _cache.clear()
        _primary_by_clinic.clear()


def _cache_get(key_id: str) -> _Cached | None:
    with _cache_lock:
        entry = _cache.get(key_id)
        if entry is None or entry.expires_at < time.monotonic():
            _cache.pop(key_id, None)
            return None
        return entry


def _cache_put(row: ClinicKey, key: bytes) -> None:
    with _cache_lock:
        # Short-lived: a master key removed from MASTER_KEYS stops working within minutes.
        _cache[row.key_id] = _Cached(clinic_id=row.clinic_id, key=key, expires_at=time.monotonic() + CACHE_SECONDS)


# --- clinic keys ------------------------------------------------------------------------------


def key_document_key(*, clinic_uuid: uuid.UUID, key_id: str) -> str:
    return f"clinics/{clinic_uuid}/keys/{key_id}"


def clinic_key_document(row: ClinicKey) -> dict[str, Any]:
    """Return the self-describing JSON document of a wrapped clinic key (see docs/encryption.md)."""
    return {
        "format": KEY_DOCUMENT_FORMAT,
        "version": KEY_DOCUMENT_VERSION,
        "clinic_uuid": str(row.clinic.uuid),
        "key_id": row.key_id,
        "master_key_id": row.master_key_id,
        "algorithm": "AWS-KMS" if _master_key_is_kms(row.master_key_id) else "AES-256-GCM",
        "wrapped_key": base64.b64encode(bytes(row.wrapped_key)).decode(),
        **(
            {
                "wrapped_key_layout": "AWS KMS CiphertextBlob",
                "encryption_context": {
                    "purpose": "pacs-portal clinic key v1",
                    "clinic": "<clinic uuid>",
                    "key_id": "<key id>",
                },
            }
            if _master_key_is_kms(row.master_key_id)
            else {
                "wrapped_key_layout": "nonce(12) || ciphertext(32) || tag(16)",
                "associated_data": "'pacs-portal clinic key v1' || 0x00 || clinic uuid (16 bytes) || key id (ASCII)",
            }
        ),
        "created_at": row.created_at.isoformat(),
    }


def clinic_key_publish(row: ClinicKey, *, store_names: tuple[str, ...] = stores.STORE_NAMES) -> None:
    """Write the wrapped key's document to the stores; raises StorageUnavailable on failure."""
    body = json.dumps(clinic_key_document(row), indent=2, sort_keys=True).encode()
    key = key_document_key(clinic_uuid=row.clinic.uuid, key_id=row.key_id)
    for name in store_names:
        stores.get_store(name).put(key, io.BytesIO(body))


def _master_key_is_kms(master_key_id: str) -> bool:
    entry = master_keyring().get(master_key_id)
    return entry is not None and entry.is_kms


def clinic_keys_publish(*, clinic: Clinic | None = None) -> list[str]:
    """Publish every clinic key (of one clinic, or all); return the key ids that failed to publish."""
    # Unscoped when clinic is None: a cross-clinic maintenance step run by an operator.
    rows = ClinicKey.objects.for_clinic(clinic) if clinic is not None else ClinicKey.objects.all()
    failed: list[str] = []
    for row in rows.select_related("clinic").order_by("pk").iterator():
        try:
            clinic_key_publish(row)
        except StorageUnavailable as exc:
            logger.warning("clinic key %s not published: %s", row.key_id, exc.message)
            failed.append(row.key_id)
    return failed


def key_document_unwrap(document: bytes | str | dict[str, Any]) -> tuple[uuid.UUID, str, bytes]:
    """Unwrap a published key document with MASTER_KEYS; return (clinic uuid, key id, key).

    This is all a restore needs besides the replica's objects.
    """
    if not isinstance(document, dict):
        try:
            parsed = json.loads(document)
        except ValueError:
            raise KeyUnavailable("The key document is not JSON.") from None
        # A JSON list or string would otherwise fail below with AttributeError, not KeyUnavailable.
        if not isinstance(parsed, dict):
            raise KeyUnavailable("The key document is not a JSON object.")
        document = parsed
    if document.get("format") != KEY_DOCUMENT_FORMAT or document.get("version") != KEY_DOCUMENT_VERSION:
        raise KeyUnavailable("The key document has an unknown format or version.")
    try:
        clinic_uuid = uuid.UUID(document["clinic_uuid"])
        key_id = str(document["key_id"])
        wrapped = base64.b64decode(document["wrapped_key"], validate=True)
        master_key_id = str(document["master_key_id"])
    except (KeyError, ValueError, binascii.Error):
        raise KeyUnavailable("The key document is incomplete.") from None
    key = key_unwrap(
        master_key=_master_key(master_key_id, key_id), clinic_uuid=clinic_uuid, key_id=key_id, wrapped=wrapped
    )
    return clinic_uuid, key_id, key


@transaction.atomic
def clinic_key_import(*, clinic: Clinic, document: bytes | str | dict[str, Any]) -> ClinicKey:
    """Recreate a clinic's key row from its published document (restore from the replica).

    The key is checked by unwrapping it; an existing row with the same id is returned unchanged.
    """
    clinic_uuid, key_id, key = key_document_unwrap(document)
    if clinic_uuid != clinic.uuid:
        raise KeyUnavailable(f"Key {key_id} belongs to another clinic.")
    existing = ClinicKey.objects.filter(key_id=key_id).first()
    if existing is not None:
        if existing.clinic_id != clinic.pk:
            raise KeyUnavailable(f"Key {key_id} belongs to another clinic.")
        return existing
    master_id, master = master_key_current()
    has_primary = ClinicKey.objects.for_clinic(clinic).filter(is_primary=True).exists()
    return ClinicKey.objects.create(
        clinic=clinic,
        key_id=key_id,
        master_key_id=master_id,
        wrapped_key=key_wrap(master_key=master, clinic_uuid=clinic.uuid, key_id=key_id, clinic_key=key),
        is_primary=not has_primary,
    )


def _new_key_id() -> str:
    return f"ck_{uuid.uuid4().hex}"


def clinic_key_get(clinic: Clinic) -> tuple[str, bytes]:
    """Return (key id, key) of the clinic's current data key, creating it on first use.

    A new key is published to the primary store before it is used (StorageUnavailable otherwise)
    and to the replica when reachable (else the backup sweep publishes it later).
    """
    with _cache_lock:
        remembered = _primary_by_clinic.get(clinic.pk)
    if remembered is not None and remembered[1] >= time.monotonic():
        cached = _cache_get(remembered[0])
        if cached is not None:
            return remembered[0], cached.key
    row = ClinicKey.objects.for_clinic(clinic).filter(is_primary=True).select_related("clinic").order_by("-pk").first()
    if row is None:
        row = _clinic_key_create(clinic)
        if connection.in_atomic_block:
            # The new row is not committed yet: if the caller's transaction rolls back, a cached
            # choice would make later objects use a key that exists nowhere in the database.
            return row.key_id, _row_unwrap(row)
    key = clinic_key_unwrap(row.key_id, row=row)
    with _cache_lock:
        _primary_by_clinic[clinic.pk] = (row.key_id, time.monotonic() + CACHE_SECONDS)
    return row.key_id, key


def _clinic_key_create(clinic: Clinic) -> ClinicKey:
    with transaction.atomic():
        # The clinic row lock makes concurrent first uploads agree on a single key.
        Clinic.objects.select_for_update().filter(pk=clinic.pk).first()
        row = ClinicKey.objects.for_clinic(clinic).filter(is_primary=True).select_related("clinic").first()
        if row is not None:
            return row
        master_id, master = master_key_current()
        key_id = _new_key_id()
        row = ClinicKey.objects.create(
            clinic=clinic,
            key_id=key_id,
            master_key_id=master_id,
            wrapped_key=key_wrap(
                master_key=master, clinic_uuid=clinic.uuid, key_id=key_id, clinic_key=AESGCM.generate_key(256)
            ),
            is_primary=True,
        )
        row.clinic = clinic
        clinic_key_publish(row, store_names=("primary",))
    try:
        clinic_key_publish(row, store_names=("replica",))
    except StorageUnavailable as exc:
        logger.warning("clinic key %s not yet on the replica: %s", key_id, exc.message)
    logger.info("clinic key %s created for clinic %s", key_id, clinic.uuid)
    return row


def clinic_key_unwrap(key_id: str, *, row: ClinicKey | None = None) -> bytes:
    """Return the plain clinic key with this id; raises KeyUnavailable if it is unknown or cannot be unwrapped."""
    cached = _cache_get(key_id)
    if cached is not None:
        return cached.key
    if row is None:
        # Keyed by a globally unique id; callers that hold a clinic use clinic_key_for_object instead.
        row = ClinicKey.objects.select_related("clinic").filter(key_id=key_id).first()
        if row is None:
            raise KeyUnavailable(f"No clinic key has the id {key_id}.")
    key = _row_unwrap(row)
    _cache_put(row, key)
    return key


def clinic_key_for_object(*, clinic: Clinic, key_id: str) -> bytes:
    """Return the key named by an object's header, only if it belongs to ``clinic``."""
    # An object naming another clinic's key was copied from that clinic: that is a swapped object.
    cached = _cache_get(key_id)
    if cached is not None:
        if cached.clinic_id != clinic.pk:
            raise ObjectCorrupt(f"The object names key {key_id}, which is not this clinic's: it was moved here.")
        return cached.key
    row = ClinicKey.objects.for_clinic(clinic).select_related("clinic").filter(key_id=key_id).first()
    if row is None:
        raise ObjectCorrupt(f"The object names key {key_id}, which is not this clinic's: it was moved here.")
    return clinic_key_unwrap(key_id, row=row)


# --- master key rotation ----------------------------------------------------------------------


@dataclass
class RotationResult:
    master_key_id: str
    rewrapped: list[str] = field(default_factory=list)
    already_current: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    unpublished: list[str] = field(default_factory=list)

    @property
    def is_complete(self) -> bool:
        return not self.failed and not self.unpublished


def master_key_rotate() -> RotationResult:
    """Re-wrap every clinic key under the current master key; objects are not touched.

    Idempotent: keys already wrapped by the current master key are left alone, so a run that
    failed half-way can simply be repeated. Keys whose master key is missing are reported in
    ``failed``, documents that could not be written to a store in ``unpublished``.
    """
    master_id, master = master_key_current()
    result = RotationResult(master_key_id=master_id)
    # Unscoped on purpose: rotation is a cross-clinic maintenance step.
    result.already_current = ClinicKey.objects.filter(master_key_id=master_id).count()
    pending = list(ClinicKey.objects.exclude(master_key_id=master_id).order_by("pk").values_list("pk", "key_id"))
    for pk, key_id in pending:
        try:
            with transaction.atomic():
                row = ClinicKey.objects.select_for_update().select_related("clinic").get(pk=pk)
                if row.master_key_id == master_id:
                    continue
                plain = _row_unwrap(row)
                row.wrapped_key = key_wrap(
                    master_key=master, clinic_uuid=row.clinic.uuid, key_id=row.key_id, clinic_key=plain
                )
                row.master_key_id = master_id
                row.save(update_fields=["wrapped_key", "master_key_id"])
        except ArchiveError as exc:
            result.failed[key_id] = exc.message
            continue
        result.rewrapped.append(row.key_id)
        try:
            clinic_key_publish(row)
        except StorageUnavailable as exc:
            logger.warning("rotated clinic key %s not published: %s", row.key_id, exc.message)
            result.unpublished.append(row.key_id)
    logger.info(
        "master key rotation to %s: %d re-wrapped, %d failed", master_id, len(result.rewrapped), len(result.failed)
    )
    return result


def master_keys_in_use() -> dict[str, int]:
    """Return how many clinic keys each master key id wraps (unscoped: an operator's question)."""
    from django.db.models import Count

    return {
        row["master_key_id"]: row["n"]
        for row in ClinicKey.objects.values("master_key_id").annotate(n=Count("pk")).order_by("master_key_id")
    }

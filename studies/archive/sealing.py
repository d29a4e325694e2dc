"""Small secrets sealed with the clinic's data key: AES-256-GCM, bound to the clinic and a purpose.

For values the portal must use again but never keep in the clear (a DICOMweb source's password or token).
The sealed form is a short JSON document naming the clinic key id, so a rotated master key or a new
clinic key leaves it readable; its associated data (clinic uuid and purpose) makes a sealed value copied
to another clinic's row or another field fail to open (docs/encryption.md, "Sealed values").
"""

from __future__ import annotations

import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from studies.archive import keys
from studies.archive.errors import KeyUnavailable, ObjectCorrupt
from tenants.models import Clinic

SEALED_FORMAT = "pacs-portal-sealed-v1"
NONCE_SIZE = 12


def _aad(clinic: Clinic, purpose: str) -> bytes:
    return f"{SEALED_FORMAT}\x00{clinic.uuid}\x00{purpose}".encode()


def payload_seal(*, clinic: Clinic, plaintext: bytes, purpose: str) -> bytes:
    """Encrypt a small payload with the clinic's current key; ``purpose`` names what it is for."""
    key_id, key = keys.clinic_key_get(clinic)
    nonce = os.urandom(NONCE_SIZE)
    sealed = AESGCM(key).encrypt(nonce, plaintext, _aad(clinic, purpose))
    return json.dumps({"f": SEALED_FORMAT, "k": key_id, "n": nonce.hex(), "c": sealed.hex()}).encode()


def payload_open(*, clinic: Clinic, sealed: bytes, purpose: str) -> bytes:
    """Decrypt what payload_seal returned for this clinic and purpose.

    Raises KeyUnavailable when the value is not one of ours, or was sealed for another clinic or purpose.
    """
    try:
        envelope = json.loads(bytes(sealed))
        if envelope.get("f") != SEALED_FORMAT:
            raise ValueError(envelope.get("f"))
        nonce, ciphertext = bytes.fromhex(envelope["n"]), bytes.fromhex(envelope["c"])
        key_id = str(envelope["k"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyUnavailable("The sealed value is not in the sealed-value format.") from exc
    try:
        key = keys.clinic_key_for_object(clinic=clinic, key_id=key_id)
    except ObjectCorrupt as exc:
        raise KeyUnavailable("The sealed value names a key that is not this clinic's.") from exc
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, _aad(clinic, purpose))
    except InvalidTag as exc:
        raise KeyUnavailable("The sealed value does not open for this clinic and purpose.") from exc

"""The object format as documented in docs/encryption.md, checked by an independent decryptor.

The decryptor below uses only the documentation and the `cryptography` primitives, like an operator
recovering data from the replica with a master key and nothing of the portal.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import uuid

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from studies.archive import crypto, keys, objects, stores


def independent_decrypt(*, master_key: bytes, key_document: bytes, data: bytes, object_name: str) -> bytes:
    doc = json.loads(key_document)
    clinic_uuid, key_id = uuid.UUID(doc["clinic_uuid"]), doc["key_id"]
    wrapped = base64.b64decode(doc["wrapped_key"])
    clinic_key = AESGCM(master_key).decrypt(
        wrapped[:12], wrapped[12:], b"pacs-portal clinic key v1\x00" + clinic_uuid.bytes + key_id.encode()
    )
    magic, version, segment, length = struct.unpack(">4sBIB", data[:10])
    assert magic == b"PXAE" and version == 1
    assert data[10 : 10 + length].decode() == key_id
    header_length = 49 + length
    header, salt, prefix = data[:header_length], data[10 + length : 42 + length], data[42 + length : header_length]
    key = HKDF(hashes.SHA256(), 32, salt, b"pacs-portal archive v1 segment key").derive(clinic_key)
    aad = header + clinic_uuid.bytes + object_name.encode()
    body, out, index = data[header_length:], [], 0
    while True:
        sealed, body = body[: segment + 16], body[segment + 16 :]
        last = not body
        out.append(AESGCM(key).decrypt(prefix + struct.pack(">IB", index, last), sealed, aad))
        if last:
            return b"".join(out)
        index += 1


@pytest.mark.parametrize("size", [0, 4096, 4096 * 3 + 1])
def test_replica_object_decrypts_with_master_key_and_key_document_alone(clinic, settings, size):
    master_key = os.urandom(32)
    settings.MASTER_KEYS = f"escrow:{base64.b64encode(master_key).decode()}"
    settings.ARCHIVE_SEGMENT_SIZE = 4096
    data = os.urandom(size)
    stored = objects.object_put(clinic=clinic, source=io.BytesIO(data), object_uuid=uuid.uuid4())
    replica = stores.get_store("replica")
    with stores.get_store("primary").open(stored.key) as source:
        replica.put(stored.key, source)

    with replica.open(keys.key_document_key(clinic_uuid=clinic.uuid, key_id=stored.key_id)) as handle:
        document = handle.read()
    with replica.open(stored.key) as handle:
        ciphertext = handle.read()

    assert (
        independent_decrypt(master_key=master_key, key_document=document, data=ciphertext, object_name=stored.key)
        == data
    )


def test_header_layout_matches_the_documentation(clinic):
    stored = objects.object_put(clinic=clinic, source=io.BytesIO(b"x"), object_uuid=uuid.uuid4())

    with stores.get_store("primary").open(stored.key) as handle:
        raw = handle.read()

    assert raw[:4] == b"PXAE"
    assert raw[4] == 1
    assert struct.unpack(">I", raw[5:9])[0] == crypto.DEFAULT_SEGMENT_SIZE
    assert raw[10 : 10 + raw[9]].decode() == stored.key_id
    assert len(raw) == 49 + raw[9] + 1 + 16


def test_same_plaintext_encrypts_differently_every_time(clinic):
    first = objects.object_put(clinic=clinic, source=io.BytesIO(b"same"), object_uuid=uuid.uuid4())
    second = objects.object_put(clinic=clinic, source=io.BytesIO(b"same"), object_uuid=uuid.uuid4())

    one = stores.get_store("primary").path(first.key).read_bytes()
    two = stores.get_store("primary").path(second.key).read_bytes()

    assert one[10:] != two[10:]
    assert first.sha256 == second.sha256


def test_unknown_format_version_is_refused_clearly():
    header = crypto.header_build(key_id="ck_test").raw
    future = header[:4] + bytes([2]) + header[5:]

    with pytest.raises(crypto.ObjectCorrupt, match="version 2"):
        crypto.header_read(io.BytesIO(future))


def test_forged_huge_segment_size_is_refused_before_allocating():
    header = crypto.header_build(key_id="ck_test").raw
    forged = header[:5] + struct.pack(">I", 2**31) + header[9:]

    with pytest.raises(crypto.ObjectCorrupt, match="segment size"):
        crypto.header_read(io.BytesIO(forged))

"""Encryption and decryption stream: memory stays flat whatever the object size."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
import uuid

import pytest

from studies.archive import objects

SIZE = 300 * 1024 * 1024
LIMIT = 64 * 1024 * 1024


class GeneratedSource(io.RawIOBase):
    """Data that never exists whole: a random 1 MiB block, each copy stamped with its index."""

    BLOCK = os.urandom(1024 * 1024)

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        index, offset = divmod(self.position, len(self.BLOCK))
        block = index.to_bytes(8, "big") + self.BLOCK[8:]
        count = min(len(buffer), self.size - self.position, len(block) - offset)
        buffer[:count] = block[offset : offset + count]
        self.position += count
        return count


def digest_of(source: io.RawIOBase) -> str:
    digest = hashlib.sha256()
    while chunk := source.read(1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.slow
def test_300_mb_object_is_encrypted_and_decrypted_in_bounded_memory(clinic):
    expected = digest_of(GeneratedSource(SIZE))
    objects.object_put(clinic=clinic, source=io.BytesIO(b"warm up the key and imports"), object_uuid=uuid.uuid4())
    tracemalloc.start()
    try:
        stored = objects.object_put(clinic=clinic, source=GeneratedSource(SIZE), object_uuid=uuid.uuid4())
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with objects.object_open(clinic=clinic, key=stored.key) as stream:
            read_digest = digest_of(stream)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert stored.size_bytes == SIZE
    assert stored.sha256 == expected == read_digest
    assert put_peak < LIMIT, f"encryption peaked at {put_peak / 2**20:.1f} MiB"
    assert read_peak < LIMIT, f"decryption peaked at {read_peak / 2**20:.1f} MiB"


@pytest.mark.slow
def test_s3_upload_and_download_stay_in_bounded_memory(clinic, s3_stores):
    size = 100 * 1024 * 1024
    expected = digest_of(GeneratedSource(size))
    objects.object_put(clinic=clinic, source=io.BytesIO(b"warm up boto3"), object_uuid=uuid.uuid4())
    tracemalloc.start()
    try:
        stored = objects.object_put(clinic=clinic, source=GeneratedSource(size), object_uuid=uuid.uuid4())
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with objects.object_open(clinic=clinic, key=stored.key) as stream:
            read_digest = digest_of(stream)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert stored.sha256 == expected == read_digest
    assert put_peak < LIMIT, f"S3 upload peaked at {put_peak / 2**20:.1f} MiB"
    assert read_peak < LIMIT, f"S3 download peaked at {read_peak / 2**20:.1f} MiB"

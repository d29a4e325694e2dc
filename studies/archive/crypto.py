"""The segmented AES-256-GCM object format (see docs/encryption.md for the byte layout).

Every object is a header followed by segments. Each segment is AES-256-GCM with a per-object key
derived by HKDF-SHA256 from the clinic key and a random salt, and a nonce made of a random per-object
prefix, the segment counter and a last-segment flag (the STREAM construction of Hoang, Reyhanitabar,
Rogaway and Vizar, as in Tink's AesGcmHkdfStreaming). The counter catches reordered or dropped
segments, the flag catches truncation and appended data, and the associated data (header, clinic uuid,
object key) catches an object copied under another name or clinic. Both directions stream: at most two
segments are held in memory whatever the object size.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from studies.archive.errors import ObjectCorrupt

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

MAGIC = b"PXAE"
FORMAT_VERSION = 1
DEFAULT_SEGMENT_SIZE = 1024 * 1024
MIN_SEGMENT_SIZE = 4096
# Bounds what a reader allocates for one segment, so a forged header cannot exhaust memory.
MAX_SEGMENT_SIZE = 16 * 1024 * 1024
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
TAG_SIZE = 16
MAX_KEY_ID_LENGTH = 64
MAX_SEGMENTS = 2**32
HKDF_INFO = b"pacs-portal archive v1 segment key"

_FIXED = struct.Struct(">4sBIB")  # magic, version, segment size, key id length


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Header:
    """The parsed object header; ``raw`` is its exact bytes, part of every segment's associated data."""

    key_id: str
    segment_size: int
    salt: bytes
    nonce_prefix: bytes
    raw: bytes


def header_build(*, key_id: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Header:
    """Make a fresh header with a random salt and nonce prefix."""
    encoded = key_id.encode("ascii")
    if not 1 <= len(encoded) <= MAX_KEY_ID_LENGTH:
        raise ValueError("The key id must be 1 to 64 ASCII characters.")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError(f"The segment size must be between {MIN_SEGMENT_SIZE} and {MAX_SEGMENT_SIZE} bytes.")
    salt = os.urandom(SALT_SIZE)
    prefix = os.urandom(NONCE_PREFIX_SIZE)
    raw = _FIXED.pack(MAGIC, FORMAT_VERSION, segment_size, len(encoded)) + encoded + salt + prefix
    return Header(key_id=key_id, segment_size=segment_size, salt=salt, nonce_prefix=prefix, raw=raw)


def header_read(raw: Readable) -> Header:
    """Read and check the header at the start of an object.

    Raises ObjectCorrupt if it is not one of our objects, is cut short, or has an unknown version.
    """
    fixed = read_full(raw, _FIXED.size)
    if len(fixed) < _FIXED.size:
        raise ObjectCorrupt("The object is too short to hold an archive header.")
    magic, version, segment_size, key_id_length = _FIXED.unpack(fixed)
    if magic != MAGIC:
        raise ObjectCorrupt("The object does not start with the archive format's magic bytes.")
    if version != FORMAT_VERSION:
        raise ObjectCorrupt(f"The object uses archive format version {version}, which this release cannot read.")
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise ObjectCorrupt("The object's header names an impossible segment size.")
    if not 1 <= key_id_length <= MAX_KEY_ID_LENGTH:
        raise ObjectCorrupt("The object's header names an impossible key id length.")
    rest_length = key_id_length + SALT_SIZE + NONCE_PREFIX_SIZE
    rest = read_full(raw, rest_length)
    if len(rest) < rest_length:
        raise ObjectCorrupt("The object is too short to hold an archive header.")
    try:
        key_id = rest[:key_id_length].decode("ascii")
    except UnicodeDecodeError:
        raise ObjectCorrupt("The object's key id is not ASCII.") from None
    salt = rest[key_id_length : key_id_length + SALT_SIZE]
    prefix = rest[key_id_length + SALT_SIZE :]
    return Header(key_id=key_id, segment_size=segment_size, salt=salt, nonce_prefix=prefix, raw=fixed + rest)


def associated_data(*, header: Header, clinic_uuid: uuid.UUID, object_key: str) -> bytes:
    """Bind every segment to this header, this clinic and this object name."""
    return header.raw + clinic_uuid.bytes + object_key.encode("utf-8")


def segment_key(*, clinic_key: bytes, header: Header) -> bytes:
    """Derive the per-object AES-256 key, so that nonces never repeat across objects of one clinic."""
    if len(clinic_key) != 32:
        raise ValueError("A clinic key is 32 bytes.")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=header.salt, info=HKDF_INFO).derive(clinic_key)


def segment_nonce(prefix: bytes, index: int, *, is_last: bool) -> bytes:
    if index >= MAX_SEGMENTS:
        raise ValueError("The object has more segments than the format allows.")
    return prefix + struct.pack(">IB", index, 1 if is_last else 0)


def ciphertext_size(*, plaintext_size: int, key_id: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """Return the stored size of an object holding ``plaintext_size`` bytes."""
    segments = max(1, -(-plaintext_size // segment_size))
    return (
        _FIXED.size + len(key_id.encode("ascii")) + SALT_SIZE + NONCE_PREFIX_SIZE + plaintext_size + segments * TAG_SIZE
    )


def read_full(raw: Readable, size: int) -> bytes:
    """Read exactly ``size`` bytes unless the stream ends first (raw streams may return less)."""
    first = raw.read(size)
    if not first or len(first) == size:
        return first or b""
    # Short reads: a file's last segment (the only one, for most instances) ends short of ``size``;
    # keep the pieces and join them only if there are several, so that case copies nothing.
    pieces, count = [first], len(first)
    while count < size:
        chunk = raw.read(size - count)
        if not chunk:
            break
        pieces.append(chunk)
        count += len(chunk)
    return first if len(pieces) == 1 else b"".join(pieces)


class _ChunkReader(io.RawIOBase):
    """A read-only raw stream that serves bytes produced one chunk at a time by ``_next_chunk``."""

    def __init__(self) -> None:
        super().__init__()
        self._chunk = b""
        self._offset = 0
        self._done = False
        self._position = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def _next_chunk(self) -> bytes | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _fill(self) -> bool:
        """Make sure unread bytes are at hand; False at the end of the stream."""
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        while self._offset >= len(self._chunk):
            if self._done:
                return False
            chunk = self._next_chunk()
            if chunk is None:
                self._done = True
                return False
            self._chunk, self._offset = chunk, 0
        return True

    def prime(self) -> None:
        """Produce the first chunk now, so that its errors surface before any byte is read."""
        self._fill()

    def _take(self, size: int) -> bytes:
        start = self._offset
        if start == 0 and size >= len(self._chunk):
            # The common case with segment-sized reads: hand the chunk over without copying it.
            taken = self._chunk
        else:
            taken = self._chunk[start : start + size]
        self._offset += len(taken)
        self._position += len(taken)
        return taken

    def read_chunk(self) -> bytes:
        """Return the next unread bytes as produced (a whole segment, most often), without copying them.

        b"" at the end. Streaming readers (WADO-RS) use this instead of ``read`` to avoid a copy per segment.
        """
        if not self._fill():
            return b""
        return self._take(len(self._chunk))

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if size == 0 or not self._fill():
            return b""
        return self._take(size)

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if not len(view) or not self._fill():
            return 0
        taken = self._take(len(view))
        view[: len(taken)] = taken
        return len(taken)

    def readall(self) -> bytes:
        parts = []
        while self._fill():
            parts.append(self._take(len(self._chunk)))
        return b"".join(parts)


def _bytes_left(source: Readable) -> int | None:
    """How many bytes a regular file has left to read from its position; None for any other stream."""
    try:
        status = os.fstat(source.fileno())  # type: ignore[attr-defined]
        if not stat.S_ISREG(status.st_mode):
            return None
        return max(0, status.st_size - source.tell())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return None


class EncryptingReader(_ChunkReader):
    """Read ciphertext (header, then segments) produced on the fly from a plaintext source.

    After the last byte has been read, ``plaintext_size`` and ``sha256`` describe the plaintext.
    """

    def __init__(
        self,
        source: Readable,
        *,
        key_id: str,
        clinic_key: bytes,
        clinic_uuid: uuid.UUID,
        object_key: str,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
    ) -> None:
        super().__init__()
        self._source = source
        self.header = header_build(key_id=key_id, segment_size=segment_size)
        self._aead = AESGCM(segment_key(clinic_key=clinic_key, header=self.header))
        self._aad = associated_data(header=self.header, clinic_uuid=clinic_uuid, object_key=object_key)
        self._hash = hashlib.sha256()
        self._index = -1  # -1: the header comes next
        self._pending: bytes | None = None
        self._finished = False
        self.plaintext_size = 0
        self._left = _bytes_left(source)

    @property
    def sha256(self) -> str:
        if not self._finished:
            raise RuntimeError("The plaintext has not been read to its end yet.")
        return self._hash.hexdigest()

    def _read_plain(self) -> bytes:
        size = self.header.segment_size
        left = 0
        if self._left is not None:
            # Ask a file for no more than it holds: a read of a whole segment allocates the segment and
            # gives the rest back, which for a 0.5 MB instance cost eight times the read itself. Once what
            # it held is read, it is asked again (and then for one byte), so a file is read to its end.
            left = self._left or _bytes_left(self._source) or 0
            size = max(1, min(size, left))
        chunk = read_full(self._source, size)
        if self._left is not None:
            self._left = max(0, left - len(chunk))
        self._hash.update(chunk)
        self.plaintext_size += len(chunk)
        return chunk

    def _next_chunk(self) -> bytes | None:
        if self._finished:
            return None
        if self._index < 0:
            self._index = 0
            self._pending = self._read_plain()
            return self.header.raw
        current = self._pending or b""
        # One segment of look-ahead tells whether this one is the last (it carries the flag).
        following = self._read_plain() if len(current) == self.header.segment_size else b""
        is_last = not following
        nonce = segment_nonce(self.header.nonce_prefix, self._index, is_last=is_last)
        sealed = self._aead.encrypt(nonce, current, self._aad)
        self._index += 1
        self._pending = following
        if is_last:
            self._finished = True
        return sealed


class SegmentBuffers:
    """Two ciphertext buffers for readers that run one after another, never at the same time.

    Reading each segment into a new bytes object costs as much as decrypting it on this kind of machine
    (the pages of every fresh allocation are faulted in and zeroed); a sender streaming a whole study
    (WADO-RS) reads every object into the same two buffers instead. Plaintext is always a new object,
    so what a reader has handed out is never overwritten.
    """

    def __init__(self) -> None:
        self._buffers = [bytearray(), bytearray()]
        self._next = 0

    def take(self, size: int) -> bytearray:
        """The buffer not handed out last time, at least ``size`` bytes long (a reader holds two segments)."""
        index, self._next = self._next, self._next ^ 1
        if len(self._buffers[index]) < size:
            self._buffers[index] = bytearray(size)
        return self._buffers[index]


class DecryptingReader(_ChunkReader):
    """Read plaintext from ciphertext, releasing a segment only after its tag has been verified.

    ``raw`` is positioned just after the header. A missing final segment (truncation), extra data
    after it, a reordered, altered or foreign segment raise ObjectCorrupt when reached; the end of
    the stream is reported only once the segment flagged as last has been verified.
    """

    def __init__(
        self,
        raw: BinaryIO | Readable,
        *,
        header: Header,
        clinic_key: bytes,
        clinic_uuid: uuid.UUID,
        object_key: str,
        on_close: Callable[[], None] | None = None,
        buffers: SegmentBuffers | None = None,
    ) -> None:
        super().__init__()
        self._raw = raw
        self._buffers = buffers
        self.header = header
        self._aead = AESGCM(segment_key(clinic_key=clinic_key, header=header))
        self._aad = associated_data(header=header, clinic_uuid=clinic_uuid, object_key=object_key)
        self._sealed_size = header.segment_size + TAG_SIZE
        self._index = 0
        self._lookahead: bytes | memoryview | None = None
        self._finished = False
        self._failure: ObjectCorrupt | None = None
        self._on_close = on_close

    def _next_chunk(self) -> bytes | None:
        if self._failure is not None:
            # Once a segment has failed, nothing after it is trustworthy either.
            raise self._failure
        if self._finished:
            return None
        current = self._lookahead if self._lookahead is not None else self._read_sealed()
        following = self._read_sealed() if len(current) == self._sealed_size else b""
        self._lookahead = following
        is_last = not following
        if len(current) < TAG_SIZE:
            self._failure = ObjectCorrupt("The object is truncated: its final segment is missing.")
            raise self._failure
        nonce = segment_nonce(self.header.nonce_prefix, self._index, is_last=is_last)
        try:
            plain = self._aead.decrypt(nonce, current, self._aad)
        except InvalidTag:
            self._failure = ObjectCorrupt(
                f"Segment {self._index} of the object failed authentication "
                "(tampered, truncated, extended, reordered or stored under another name)."
            )
            raise self._failure from None
        self._index += 1
        if is_last:
            self._finished = True
        return plain

    def _read_sealed(self) -> bytes | memoryview:
        """The next sealed segment (or what is left of the object, if less), read into a reused buffer."""
        if self._buffers is None or not hasattr(self._raw, "readinto"):
            return read_full(self._raw, self._sealed_size)
        size = self._sealed_size
        left = getattr(self._raw, "size_left", None)
        if left is not None:
            # Local files know their size: a 0.5 MB object fills half a 1 MiB segment buffer, no more.
            size = max(min(size, left()), 0)
        view = memoryview(self._buffers.take(size))[:size]
        count = 0
        while count < size:
            got = self._raw.readinto(view[count:])
            if not got:
                break
            count += got
        return view[:count]

    def close(self) -> None:
        if not self.closed:
            try:
                close = getattr(self._raw, "close", None)
                if close is not None:
                    close()
                if self._on_close is not None:
                    self._on_close()
            finally:
                super().close()

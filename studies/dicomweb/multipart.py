"""multipart/related (RFC 2387) for DICOMweb: a streaming reader for STOW-RS, a writer for WADO-RS.

The reader never holds a whole part in memory: each part's body goes to a temporary file while the
request body is read in chunks, and only a delimiter's length of bytes is kept back between chunks.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from portal.exceptions import PortalError

CHUNK = 256 * 1024
MAX_HEADER_BYTES = 16 * 1024


class MultipartInvalid(PortalError):
    code = "invalid_multipart"


@dataclass
class Part:
    headers: dict[str, str]
    path: str
    size: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def media_type_params(value: str) -> tuple[str, dict[str, str]]:
    """Split 'type/sub; a=1; b="2"' into the media type and its parameters (names lower-cased)."""
    items = re.findall(r';\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', value)
    main = value.split(";", 1)[0].strip().lower()
    params = {name.lower(): raw.strip().strip('"') for name, raw in items}
    return main, params


def _read(stream: BinaryIO, size: int) -> bytes:
    return stream.read(size) or b""


def parts_read(stream: BinaryIO, *, boundary: str, directory: str | None = None) -> Iterator[Part]:
    """Yield each part of a multipart body read from ``stream``, its body saved in a temporary file.

    The caller owns the files (delete them with ``os.unlink(part.path)``). Raises MultipartInvalid if
    the body is not well-formed multipart with this boundary.
    """
    if not boundary or len(boundary) > 200:
        raise MultipartInvalid("The multipart boundary is missing or too long.")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    # A leading CRLF lets the first boundary (which may open the body) match like the others.
    buffer = b"\r\n" + _read(stream, CHUNK)
    # Skip the preamble up to the first delimiter.
    while True:
        at = buffer.find(delimiter)
        if at >= 0:
            buffer = buffer[at + len(delimiter) :]
            break
        more = _read(stream, CHUNK)
        if not more:
            raise MultipartInvalid("The body holds no part with the declared boundary.")
        buffer = buffer[-len(delimiter) :] + more
    while True:
        # After a delimiter: "--" closes the body; otherwise optional padding, then CRLF.
        while len(buffer) < 2:
            more = _read(stream, CHUNK)
            if not more:
                raise MultipartInvalid("The body ends without the closing boundary.")
            buffer += more
        if buffer.startswith(b"--"):
            return
        while b"\r\n\r\n" not in buffer and not buffer.startswith(b"\r\n\r\n"):
            if len(buffer) > MAX_HEADER_BYTES:
                raise MultipartInvalid("A part's headers are too long.")
            more = _read(stream, CHUNK)
            if not more:
                raise MultipartInvalid("The body ends inside a part's headers.")
            buffer += more
        line_end = buffer.find(b"\r\n")
        header_end = buffer.find(b"\r\n\r\n", line_end)
        if header_end == line_end:
            header_block = b""
        else:
            header_block = buffer[line_end + 2 : header_end]
        buffer = buffer[header_end + 4 :]
        headers: dict[str, str] = {}
        for line in header_block.split(b"\r\n"):
            name, sep, value = line.decode("latin-1").partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        handle, path = tempfile.mkstemp(prefix="stow-", dir=directory)
        part = Part(headers=headers, path=path)
        try:
            with os.fdopen(handle, "wb") as out:
                while True:
                    at = buffer.find(delimiter)
                    if at >= 0:
                        out.write(buffer[:at])
                        part.size += at
                        buffer = buffer[at + len(delimiter) :]
                        break
                    keep = len(delimiter) - 1
                    if len(buffer) > keep:
                        out.write(buffer[:-keep])
                        part.size += len(buffer) - keep
                        buffer = buffer[-keep:]
                    more = _read(stream, CHUNK)
                    if not more:
                        raise MultipartInvalid("The body ends inside a part, without the closing boundary.")
                    buffer += more
        except BaseException:
            os.unlink(path)
            raise
        yield part


def new_boundary() -> str:
    return "dicomweb-" + secrets.token_hex(16)


def parts_write(
    parts: Iterable[tuple[dict[str, str], Iterable[bytes]]], *, boundary: str
) -> Iterator[bytes]:
    """Yield a multipart/related body from (headers, body chunks) pairs, streaming each body."""
    for headers, chunks in parts:
        head = f"--{boundary}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        yield head.encode("latin-1")
        for chunk in chunks:
            if chunk:
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("latin-1")


def file_chunks(source: BinaryIO, *, size: int = CHUNK) -> Iterator[bytes]:
    """Yield a file's bytes in chunks, closing it at the end (or when the consumer stops)."""
    try:
        while True:
            chunk = source.read(size)
            if not chunk:
                return
            yield chunk
    finally:
        source.close()

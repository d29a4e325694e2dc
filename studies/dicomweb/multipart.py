"""multipart/related (RFC 2387) for DICOMweb: a streaming reader for STOW-RS, a writer for WADO-RS.

The reader is python-multipart's streaming parser: each part's body goes to a temporary file while the
request body is read in chunks, so no part is ever held whole in memory. ``request_body`` gives the body
of a request read to its end whatever its framing (``Content-Length`` or ``Transfer-Encoding: chunked``).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Protocol

from django.http import HttpRequest
from django.utils.http import parse_header_parameters
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from portal.exceptions import PortalError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

CHUNK = 256 * 1024
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADERS = 32
# A preamble longer than this before the first boundary is not a DICOMweb body.
MAX_PREAMBLE_BYTES = 64 * 1024


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


class Readable(Protocol):
    """What the reader needs of a body: the request itself, or the WSGI input stream of a chunked one."""

    def read(self, size: int = -1, /) -> bytes: ...


def media_type_params(value: str) -> tuple[str, dict[str, str]]:
    """Split 'type/sub; a=1; b="2"' into the media type and its parameters (names lower-cased)."""
    main, params = parse_header_parameters(value or "")
    return main.strip().lower(), {name.lower(): raw.strip() for name, raw in params.items()}


def request_body(request: HttpRequest) -> Readable:
    """The request's body as a stream, read to its end whatever the framing.

    Django reads ``Content-Length`` bytes and nothing when there is none; a chunked body (Orthanc's
    DICOMweb client sends one by default) is de-chunked by the WSGI server (gunicorn) and has no
    ``Content-Length``, so it is read from ``wsgi.input`` to its end instead.
    """
    chunked = "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
    if chunked and not request.META.get("CONTENT_LENGTH"):
        wsgi_input: Readable = request.META["wsgi.input"]
        return wsgi_input
    return request


def _read(stream: Readable, size: int) -> bytes:
    return stream.read(size) or b""


def _skip_preamble(stream: Readable, opening: bytes) -> bytes:
    """Read past any preamble and the first boundary line's padding; return the bytes after that line.

    python-multipart expects the body to open with the boundary; RFC 2046 allows text before it and
    white space after a boundary, which some senders use.
    """
    buffer = b"\r\n" + _read(stream, CHUNK)
    while True:
        at = buffer.find(b"\r\n" + opening)
        if at >= 0:
            line_end = buffer.find(b"\r\n", at + 2 + len(opening))
            if line_end >= 0:
                padding = buffer[at + 2 + len(opening) : line_end]
                if padding.strip(b" \t") and not padding.startswith(b"--"):
                    raise MultipartInvalid("The body holds no part with the declared boundary.")
                return (
                    buffer[at + 2 : at + 2 + len(opening)]
                    + (b"--" if padding.startswith(b"--") else b"")
                    + buffer[line_end:]
                )
        if len(buffer) > MAX_PREAMBLE_BYTES:
            raise MultipartInvalid("The body holds no part with the declared boundary.")
        more = _read(stream, CHUNK)
        if not more:
            if at >= 0 and buffer[at + 2 + len(opening) :].startswith(b"--"):
                return buffer[at + 2 :]
            raise MultipartInvalid("The body holds no part with the declared boundary.")
        buffer += more


class _Collector:
    """python-multipart callbacks that spool each part to a temporary file and collect finished parts."""

    def __init__(self, directory: str | None) -> None:
        self.directory = directory
        self.done: list[Part] = []
        self.ended = False
        self.current: Part | None = None
        self.out: BinaryIO | None = None
        self._field: list[bytes] = []
        self._value: list[bytes] = []
        self._headers: dict[str, str] = {}

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": lambda data, start, end: self._field.append(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.append(data[start:end]),
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
            "on_end": self.end,
        }

    def part_begin(self) -> None:
        self._headers = {}

    def header_end(self) -> None:
        name = b"".join(self._field).decode("latin-1").strip().lower()
        self._headers[name] = b"".join(self._value).decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def headers_finished(self) -> None:
        handle, path = tempfile.mkstemp(prefix="stow-", dir=self.directory)
        self.current = Part(headers=self._headers, path=path)
        self.out = os.fdopen(handle, "wb")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        assert self.out is not None and self.current is not None
        # A view, not a slice: the slice would copy every chunk of the body once more before the write.
        self.out.write(memoryview(data)[start:end])
        self.current.size += end - start

    def part_end(self) -> None:
        if self.current is None:  # a part that ended inside its headers
            self.headers_finished()
        assert self.out is not None and self.current is not None
        self.out.close()
        self.done.append(self.current)
        self.current, self.out = None, None

    def end(self) -> None:
        self.ended = True

    def discard(self) -> None:
        """Remove every file not handed to the caller yet."""
        if self.out is not None:
            self.out.close()
        paths = [part.path for part in self.done] + ([self.current.path] if self.current else [])
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.done.clear()
        self.current, self.out = None, None


def parts_read(stream: Readable, *, boundary: str, directory: str | None = None) -> Iterator[Part]:
    """Yield each part of a multipart body read from ``stream``, its body saved in a temporary file.

    Parts are yielded as soon as they are complete, while the rest of the body is still being read. The
    caller owns the files (delete them with ``os.unlink(part.path)``). Raises MultipartInvalid if the
    body is not well-formed multipart with this boundary (files of parts not yet yielded are removed).
    """
    if not boundary or len(boundary) > 200:
        raise MultipartInvalid("The multipart boundary is missing or too long.")
    opening = b"--" + boundary.encode("latin-1")
    collector = _Collector(directory)
    parser = MultipartParser(
        boundary, collector.callbacks(), max_header_count=MAX_HEADERS, max_header_size=MAX_HEADER_BYTES
    )
    try:
        data = _skip_preamble(stream, opening)
        while data:
            try:
                parser.write(data)
            except MultipartParseError as exc:
                raise MultipartInvalid(f"The multipart body is malformed ({exc}).") from None
            while collector.done:
                yield collector.done.pop(0)
            if collector.ended:
                return  # anything after the closing boundary is an epilogue
            data = _read(stream, CHUNK)
        if collector.current is not None or not collector.ended:
            raise MultipartInvalid("The body ends inside a part, without the closing boundary.")
    finally:
        collector.discard()


def new_boundary() -> str:
    return "dicomweb-" + secrets.token_hex(16)


class PartLengthMismatch(RuntimeError):
    """A part's body did not have the length its headers (and the response's Content-Length) declared."""


def _head(boundary: str, headers: dict[str, str]) -> bytes:
    return (f"--{boundary}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode("latin-1")


def parts_write(parts: Iterable[tuple[dict[str, str], Iterable[bytes]]], *, boundary: str) -> Iterator[bytes]:
    """Yield a multipart/related body from (headers, body chunks) pairs, streaming each body.

    Body chunks are passed on as they are (no copy); the small pieces of framing between two bodies go
    out as one write. A part's headers are sent only once its first bytes are at hand, so an object
    that cannot be read is never announced. A part declaring a Content-Length must have exactly that
    many bytes, else PartLengthMismatch ends the stream (a client sees a short, incomplete body).
    """
    tail = b""
    for headers, chunks in parts:
        declared = headers.get("Content-Length")
        sent = 0
        iterator = iter(chunks)
        first = b""
        for first in iterator:
            if first:
                break
        yield tail + _head(boundary, headers)
        if first:
            sent += len(first)
            yield first
        for chunk in iterator:
            if chunk:
                sent += len(chunk)
                yield chunk
        if declared is not None and sent != int(declared):
            raise PartLengthMismatch(f"A part declared {declared} bytes and has {sent}.")
        tail = b"\r\n"
    yield tail + f"--{boundary}--\r\n".encode("latin-1")


def parts_length(headers: Iterable[dict[str, str]], *, boundary: str) -> int:
    """The exact length of ``parts_write``'s body for parts with these headers (each with a Content-Length)."""
    total = 0
    for part in headers:
        total += len(_head(boundary, part)) + int(part["Content-Length"]) + 2
    return total + len(f"--{boundary}--\r\n")



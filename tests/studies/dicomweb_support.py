"""Helpers for the DICOMweb tests: real DICOM files (pydicom samples with fresh UIDs) and requests."""

from __future__ import annotations

from pathlib import Path


def multipart_body(paths: list[Path], boundary: str = "test-boundary-7d1e") -> tuple[bytes, str]:
    """Build a STOW-RS body from files; return it and its Content-Type."""
    body = b""
    for path in paths:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """Split a multipart/related answer into its part bodies."""
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    pieces = body.split(b"--" + boundary.encode())
    parts = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        _, _, content = piece.partition(b"\r\n\r\n")
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts

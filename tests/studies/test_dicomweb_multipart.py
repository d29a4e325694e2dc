"""The streaming multipart/related reader and writer used by STOW-RS and WADO-RS."""

from __future__ import annotations

import io
import os

import pytest

from studies.dicomweb.multipart import MultipartInvalid, media_type_params, parts_read, parts_write


def _read_all(body: bytes, boundary: str = "xyz") -> list[tuple[dict, bytes]]:
    result = []
    for part in parts_read(io.BytesIO(body), boundary=boundary):
        with open(part.path, "rb") as f:
            result.append((part.headers, f.read()))
        os.unlink(part.path)
    return result


def test_parts_with_preamble_padding_and_epilogue_are_read(monkeypatch):
    import studies.dicomweb.multipart as multipart

    monkeypatch.setattr(multipart, "CHUNK", 7)
    body = (b"preamble text\r\n--xyz  \r\nContent-Type: application/dicom\r\n\r\nfirst\r\n--xyz\r\n"
            b"Content-Type: application/dicom\r\nX-Other: 1\r\n\r\nsec\r\n-xyz-\r\n--xyz--\r\nepilogue")

    parts = _read_all(body)

    assert parts == [
        ({"content-type": "application/dicom"}, b"first"),
        ({"content-type": "application/dicom", "x-other": "1"}, b"sec\r\n-xyz-"),
    ]


def test_a_part_without_headers_and_a_body_opening_with_the_boundary_are_read():
    parts = _read_all(b"--xyz\r\n\r\n\x00\x01\r\n--xyz--")

    assert parts == [({}, b"\x00\x01")]


@pytest.mark.parametrize("body", [b"", b"no boundary here", b"--xyz\r\nContent-Type: a\r\n\r\nunfinished"])
def test_malformed_bodies_are_refused_and_leave_no_file(body, tmp_path):
    with pytest.raises(MultipartInvalid):
        list(parts_read(io.BytesIO(body), boundary="xyz", directory=str(tmp_path)))

    assert list(tmp_path.iterdir()) == []


def test_writer_output_reads_back():
    boundary = "b0und"
    body = b"".join(parts_write([({"Content-Type": "application/dicom"}, [b"ab", b"cd"]),
                                 ({"Content-Type": "application/dicom"}, [b""])], boundary=boundary))

    assert [content for _, content in _read_all(body, boundary)] == [b"abcd", b""]


def test_media_type_parameters_are_parsed_with_or_without_quotes():
    assert media_type_params('multipart/related; type="application/dicom"; boundary=abc') == (
        "multipart/related", {"type": "application/dicom", "boundary": "abc"})
    assert media_type_params("Multipart/Related;type=application/octet-stream;transfer-syntax=*")[1] == {
        "type": "application/octet-stream", "transfer-syntax": "*"}

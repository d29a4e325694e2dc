"""Transfer syntax conversion on the way out (WADO-RS, C-MOVE, C-GET): the DICOM module beside ``dicom.py``.

An archived instance is kept byte for byte as it arrived; a client that cannot read its syntax gets
a converted copy. Conversion decodes the pixel data (pydicom with pylibjpeg, openjpeg and libjpeg)
and, when a compressed syntax is asked for, encodes it again with a *lossless* encoder only (RLE,
JPEG-LS through pyjpegls, JPEG 2000 reversible through openjpeg). So image data already compressed
lossily is decoded at most, never compressed lossily a second time, and data stored losslessly
stays lossless; Lossy Image Compression (0028,2110) stays as the source had it.
"""

from __future__ import annotations

import io
from http import HTTPStatus
from typing import IO

import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from portal.exceptions import PortalError

UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian}
# What we can produce. Every compressed one is lossless, so nothing is ever compressed lossily here.
TARGETS = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
)
DEFAULT = ExplicitVRLittleEndian


class TranscodeError(PortalError):
    status = HTTPStatus.INTERNAL_SERVER_ERROR
    code = "transcode_failed"


def can_decode(transfer_syntax_uid: str) -> bool:
    """Whether pixel data stored in this syntax can be decoded here."""
    if transfer_syntax_uid in UNCOMPRESSED:
        return True
    try:
        return bool(get_decoder(UID(transfer_syntax_uid)).is_available)
    except NotImplementedError:
        return False


def can_transcode(source: str, target: str) -> bool:
    """Whether an instance stored in ``source`` can be sent in ``target`` (identity included)."""
    return source == target or (target in TARGETS and can_decode(source))


def dataset_transcode(ds: Dataset, target: str) -> Dataset:
    """Convert a dataset (with its file meta) to ``target`` in place and return it.

    An instance without pixel data (a report, a presentation state) has nothing to compress: asked
    for a compressed syntax, it is given in Explicit VR Little Endian.

    Raises TranscodeError when the pixel data cannot be decoded or encoded.
    """
    source = str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
    if source == target:
        return ds
    has_pixels = "PixelData" in ds
    if not has_pixels and UID(target).is_compressed:
        target = ExplicitVRLittleEndian
    try:
        if source == ExplicitVRBigEndian:
            _to_little_endian(ds)
        # A change of transfer syntax is the same instance (PS3.5 10): it keeps its SOP Instance UID.
        if has_pixels and UID(source).is_compressed:
            # Leaves Explicit VR Little Endian, and RGB where the source was YBR.
            ds.decompress(generate_instance_uid=False)
        if has_pixels and UID(target).is_compressed:
            ds.compress(UID(target), generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = UID(target)
    except Exception as exc:  # noqa: BLE001 - decoder and encoder plugins fail in their own ways
        raise TranscodeError(f"The instance can't be converted to {target} ({type(exc).__name__}).") from None
    return ds


def _to_little_endian(ds: Dataset) -> None:
    # pydicom swaps the values it decodes (US, SS, FL...) but not raw OW bytes: swap the pixels here.
    if "PixelData" in ds:
        pixels = ds.pixel_array
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds.set_original_encoding(False, True)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def instance_transcode(source: IO[bytes], target: str) -> tuple[bytes, str]:
    """Return the instance read from ``source`` as a Part 10 file in ``target``, and the syntax it is in.

    The syntax differs from ``target`` only for an instance without pixel data asked for a compressed one.
    """
    try:
        ds = pydicom.dcmread(source, force=True)
    except Exception as exc:  # noqa: BLE001 - an archived object that no longer parses
        raise TranscodeError(f"The instance can't be read for conversion ({type(exc).__name__}).") from None
    dataset_transcode(ds, target)
    output = io.BytesIO()
    ds.save_as(output, enforce_file_format=True)
    return output.getvalue(), str(ds.file_meta.TransferSyntaxUID)

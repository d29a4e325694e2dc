"""Pixel access for WADO-RS: frames, bulk data and rendered images (the DICOMweb module that uses pydicom).

Objects come decrypted from the archive as a stream; they are spooled to a temporary file (in memory
while small) so that pydicom can seek, and pixel data is decoded one frame at a time.
"""

from __future__ import annotations

import io
import math
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pydicom
from PIL import Image
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array

from portal.exceptions import PortalError

SPOOL_BYTES = 32 * 1024 * 1024
NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
}
EXPLICIT_LE = "1.2.840.10008.1.2.1"
# PS3.18 Table 8.7.3-2: the media type of a frame in each compressed transfer syntax.
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


class RenderError(PortalError):
    code = "not_renderable"


class FrameMissing(PortalError):
    status = 404
    code = "not_found"


def keyword_tag(keyword: str) -> str | None:
    """Return the 8-hex-digit tag of a DICOM keyword, or None if there is no such keyword."""
    tag = tag_for_keyword(keyword)
    return f"{tag:08X}" if tag is not None else None


def identity(path: str) -> tuple[str, str, str]:
    """Best-effort (SOP Class UID, SOP Instance UID, Study Instance UID) of a file; '' where unknown."""
    try:
        ds = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"]
        )
        return tuple(str(ds.get(k, "") or "") for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"))
    except Exception:  # noqa: BLE001 - an unreadable file simply has no UIDs to report
        return "", "", ""


def spool(source: BinaryIO) -> tempfile.SpooledTemporaryFile:
    """Copy a (decrypting, forward-only) stream into a seekable spool and close the source."""
    target = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    with closing(source):
        shutil.copyfileobj(source, target, 1024 * 1024)
    target.seek(0)
    return target


@contextmanager
def dataset_open(source: BinaryIO) -> Iterator[Dataset]:
    """Yield the dataset of a decrypted object stream (pixel data included)."""
    with spool(source) as spooled:
        yield pydicom.dcmread(spooled, force=True)


def frame_count(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def _frame_length(ds: Dataset) -> int:
    bits = int(ds.BitsAllocated)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    pixels = int(ds.Rows) * int(ds.Columns) * samples
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        pixels = pixels * 2 // 3
    return math.ceil(pixels * bits / 8)


def frames_stored(ds: Dataset, numbers: list[int]) -> list[bytes]:
    """Return frames (1-based numbers) in the stored transfer syntax: raw native bytes, or codestreams."""
    if "PixelData" not in ds:
        raise FrameMissing("This instance has no pixel data.")
    total = frame_count(ds)
    for number in numbers:
        if not 1 <= number <= total:
            raise FrameMissing(f"Frame {number} does not exist; this instance has {total} frame(s).")
    syntax = str(ds.file_meta.get("TransferSyntaxUID", EXPLICIT_LE))
    data = ds.PixelData
    if syntax in NATIVE_SYNTAXES:
        length = _frame_length(ds)
        return [bytes(data[(n - 1) * length : n * length]) for n in numbers]
    wanted = set(numbers)
    found: dict[int, bytes] = {}
    for index, frame in enumerate(generate_frames(data, number_of_frames=total), start=1):
        if index in wanted:
            found[index] = frame
        if len(found) == len(wanted):
            break
    return [found[n] for n in numbers]


def frames_native(ds: Dataset, numbers: list[int]) -> list[bytes]:
    """Return frames decoded to native little-endian pixel bytes (for uncompressed octet-stream)."""
    syntax = str(ds.file_meta.get("TransferSyntaxUID", EXPLICIT_LE))
    if syntax in NATIVE_SYNTAXES and syntax != "1.2.840.10008.1.2.2":
        return frames_stored(ds, numbers)
    frames_stored(ds, numbers)  # validates the numbers
    result = []
    for number in numbers:
        try:
            array = pixel_array(ds, index=number - 1, raw=True)
        except Exception as exc:  # noqa: BLE001 - decoder plugins fail in their own ways
            raise RenderError(f"The frame can't be decoded ({type(exc).__name__}).") from None
        result.append(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes())
    return result


def bulkdata_value(ds: Dataset, path: str) -> bytes:
    """Return the raw value of the element at a tag path such as ``7FE00010`` or ``00540016/0/00181072``."""
    parts = [p for p in path.strip("/").split("/") if p]
    current: Dataset = ds
    try:
        for position in range(0, len(parts) - 1, 2):
            current = current[int(parts[position], 16)].value[int(parts[position + 1])]
        element = current[int(parts[-1], 16)]
    except (KeyError, IndexError, ValueError, TypeError):
        raise FrameMissing("This instance has no such bulk data.") from None
    value = element.value
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise FrameMissing("That element holds no bulk data.")


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = "image/jpeg"
    window: tuple[float, float, str] | None = None  # center, width, function
    viewport: tuple[int, int] | None = None
    quality: int = 90


def _window(values: np.ndarray, ds: Dataset, window: tuple[float, float, str] | None) -> np.ndarray:
    """Map grey values to 0..255 with the VOI LUT function of PS3.3 C.11.2.1.2."""
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            center = ds.WindowCenter
            width = ds.WindowWidth
            center = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
            width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
            function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").lower()
            if width >= 1:
                window = (center, width, function)
        except (TypeError, ValueError, IndexError):
            window = None
    if window is None:
        low, high = float(values.min()), float(values.max())
        if high <= low:
            high = low + 1
        scaled = (values - low) / (high - low)
    else:
        center, width, function = window
        if function == "sigmoid":
            scaled = 1 / (1 + np.exp(-4 * (values - center) / width))
        elif function == "linear_exact":
            scaled = (values - center) / width + 0.5
        else:
            scaled = (values - (center - 0.5)) / max(width - 1, 1) + 0.5
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def render(ds: Dataset, *, frame: int, options: RenderOptions) -> bytes:
    """Render one frame (1-based) as JPEG or PNG with the requested window and viewport."""
    if "PixelData" not in ds or "Rows" not in ds:
        raise RenderError("This instance has no image to render.")
    total = frame_count(ds)
    if not 1 <= frame <= total:
        raise FrameMissing(f"Frame {frame} does not exist; this instance has {total} frame(s).")
    try:
        pixels = pixel_array(ds, index=frame - 1)
    except Exception as exc:  # noqa: BLE001 - decoder plugins fail in their own ways
        raise RenderError(f"The image can't be decoded ({type(exc).__name__}).") from None
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        rgb = pixels[..., :3]
        if rgb.dtype != np.uint8:
            peak = float(rgb.max()) or 1.0
            rgb = (rgb.astype(np.float64) * (255 / peak)).astype(np.uint8)
        image = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    else:
        values = apply_modality_lut(pixels, ds).astype(np.float64)
        grey = _window(values, ds, options.window)
        if photometric == "MONOCHROME1":
            grey = 255 - grey
        image = Image.fromarray(grey, mode="L")
    if options.viewport is not None:
        width, height = options.viewport
        # The viewport bounds the image; the aspect ratio is kept (PS3.18 8.3.5.1.3).
        scale = min(width / image.width, height / image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    output = io.BytesIO()
    if options.media_type == "image/png":
        image.save(output, format="PNG")
    else:
        image.save(output, format="JPEG", quality=options.quality)
    return output.getvalue()

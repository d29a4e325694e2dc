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
from http import HTTPStatus
from typing import BinaryIO

import numpy as np
import pydicom
from django.conf import settings
from PIL import Image, Jpeg2KImagePlugin
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing, pixel_array

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
    status = HTTPStatus.NOT_FOUND
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
        sop_class, sop_instance, study = (
            str(ds.get(k, "") or "") for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID")
        )
        return sop_class, sop_instance, study
    except Exception:  # noqa: BLE001 - an unreadable file simply has no UIDs to report
        return "", "", ""


def spool(source: BinaryIO) -> tempfile.SpooledTemporaryFile[bytes]:
    """Copy a (decrypting, forward-only) stream into a seekable spool and close the source."""
    target = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    with closing(source):
        shutil.copyfileobj(source, target, 1024 * 1024)
    target.seek(0)
    return target


@contextmanager
def dataset_open(source: BinaryIO) -> Iterator[Dataset]:
    """Yield the dataset of a decrypted object stream (pixel data included)."""
    if isinstance(source, io.BytesIO):  # already in memory and seekable (the decrypted-object cache)
        with source:
            yield pydicom.dcmread(source, force=True)
        return
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


class RenderTooLarge(PortalError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "too_large"


@dataclass(frozen=True)
class RenderLimits:
    """What one rendered request may cost (settings DICOMWEB_RENDER_*; README documents them)."""

    max_frames: int
    max_source_pixels: int
    max_output_pixels: int

    @classmethod
    def from_settings(cls) -> RenderLimits:
        return cls(
            max_frames=settings.DICOMWEB_RENDER_MAX_FRAMES,
            max_source_pixels=settings.DICOMWEB_RENDER_MAX_SOURCE_PIXELS,
            max_output_pixels=settings.DICOMWEB_RENDER_MAX_OUTPUT_PIXELS,
        )


def render_request_check(*, frames: int, options: RenderOptions, limits: RenderLimits) -> None:
    """Refuse a rendered request that asks for too many frames or too many pixels in all (before any work).

    Raises PortalError (400) for too many frames and RenderTooLarge (413) for too many output pixels.
    """
    if frames > limits.max_frames:
        raise PortalError(f"Ask for at most {limits.max_frames} rendered frames per request (this asked for {frames}).")
    if options.viewport is not None:
        width, height = options.viewport
        if frames * width * height > limits.max_output_pixels:
            raise RenderTooLarge(
                f"That is more than {limits.max_output_pixels} pixels in one answer: ask for fewer frames"
                " or a smaller viewport."
            )


def frame_pixels(header: Dataset) -> int:
    """How many values one decoded frame holds (what decoding it costs in memory, times the sample size)."""
    try:
        return int(header.Rows) * int(header.Columns) * int(header.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return 0


def decode_check(header: Dataset, *, limits: RenderLimits) -> None:
    """Refuse to decode a frame larger than the per-render memory bound."""
    if frame_pixels(header) > limits.max_source_pixels:
        raise RenderTooLarge(
            f"This image ({header.Columns} x {header.Rows}) is too large to render here; retrieve its"
            " frames instead (WADO-RS frames or the instance)."
        )


def _first_number(value: object) -> float:
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def _header_window(header: Dataset) -> tuple[float, float, str] | None:
    if "WindowCenter" not in header or "WindowWidth" not in header:
        return None
    try:
        center, width = _first_number(header.WindowCenter), _first_number(header.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(header.get("VOILUTFunction", "LINEAR") or "LINEAR").lower()
    return (center, width, function) if width >= 1 else None


def _grey_to_uint8(values: np.ndarray, header: Dataset, window: tuple[float, float, str] | None) -> np.ndarray:
    """Apply the VOI transform (PS3.3 C.11.2) with pydicom: the asked window, else the header's window or
    VOI LUT, else the 0.5-99.5 percentiles of the image."""
    window = window or _header_window(header)
    if window is not None:
        center, width, function = window
        # A stand-in header whose output range is 0..255, so pydicom's result needs no rescaling.
        view = Dataset()
        view.PhotometricInterpretation = "MONOCHROME2"
        view.BitsStored, view.PixelRepresentation = 8, 0
        view.WindowCenter, view.WindowWidth = center, width
        view.VOILUTFunction = function.upper()
        return np.clip(apply_windowing(values, view), 0, 255).astype(np.uint8)
    if header.get("VOILUTSequence"):
        try:
            bits = int(header.VOILUTSequence[0].LUTDescriptor[2])
            # The LUT is indexed by whole values (pydicom warns that floats give wrong results).
            mapped = apply_voi_lut(np.rint(values).astype(np.int64), header, prefer_lut=True).astype(np.float32)
            return np.clip(mapped * (255 / (2**bits - 1)), 0, 255).astype(np.uint8)
        except (AttributeError, IndexError, TypeError, ValueError):
            pass  # a broken LUT: fall back to the image's own range
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if high <= low:
        high = low + 1
    return (np.clip((values - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def display_image(
    pixels: np.ndarray,
    header: Dataset,
    *,
    window: tuple[float, float, str] | None = None,
    fit: tuple[int, int] | None = None,
) -> Image.Image:
    """Turn one decoded frame into what a screen shows: grey values windowed, colour as RGB, fitted into
    ``fit`` (aspect ratio kept). The one renderer of thumbnails, WADO-RS rendered and the light viewer."""
    photometric = str(header.get("PhotometricInterpretation", "")).upper()
    if fit is not None:
        # Drop rows and columns far beyond what is shown before the float work, which costs 4 bytes a value.
        step = int(min(pixels.shape[0] / max(fit[1], 1), pixels.shape[1] / max(fit[0], 1)) // 2)
        if step >= 2:
            pixels = pixels[::step, ::step]
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, header)
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        rgb = pixels[..., :3]
        if rgb.dtype != np.uint8:
            peak = float(rgb.max()) or 1.0
            rgb = (rgb.astype(np.float32) * (255 / peak)).astype(np.uint8)
        image = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    else:
        values = apply_modality_lut(pixels, header).astype(np.float32)
        grey = _grey_to_uint8(values, header, window)
        if photometric == "MONOCHROME1":
            grey = 255 - grey
        image = Image.fromarray(grey, mode="L")
    if fit is not None:
        width, height = fit
        scale = min(width / image.width, height / image.height)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.LANCZOS)
    return image


# Codecs that can decode at a fraction of the size: JPEG baseline (DCT scaling, 1/2 to 1/8) and
# JPEG 2000 (resolution levels), both through Pillow.
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_2000 = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
JPEG_2000_MAX_REDUCE = 5


def _decode_reduced(ds: Dataset, frame: int, fit: tuple[int, int] | None) -> np.ndarray | None:
    """Decode one frame at reduced resolution when it is shown much smaller and its codec allows it.

    Returns None when it does not apply or fails; the caller then decodes the whole frame.
    """
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if fit is None or (syntax != JPEG_BASELINE and syntax not in JPEG_2000):
        return None
    factor = min(int(ds.Rows) / max(fit[1], 1), int(ds.Columns) / max(fit[0], 1))
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    # Pillow reads signed JPEG 2000 samples as unsigned, and palettes need the stored indexes whole.
    if factor < 2 or photometric == "PALETTE COLOR" or (syntax in JPEG_2000 and int(ds.PixelRepresentation)):
        return None
    codestream = frames_stored(ds, [frame])[0]
    try:
        with Image.open(io.BytesIO(codestream)) as image:
            if syntax == JPEG_BASELINE:
                image.draft(image.mode, (max(1, fit[0]), max(1, fit[1])))
            elif isinstance(image, Jpeg2KImagePlugin.Jpeg2KImageFile):
                # The JPEG 2000 plugin's reduce is a settable property: decode at 1/2**n of the size.
                image.reduce = min(int(math.log2(factor)), JPEG_2000_MAX_REDUCE)
            image.load()
            return np.asarray(image)
    except Exception:  # noqa: BLE001 - any decoder trouble: fall back to the full decode
        return None


def render(ds: Dataset, *, frame: int, options: RenderOptions, limits: RenderLimits | None = None) -> bytes:
    """Render one frame (1-based) as JPEG or PNG with the requested window and viewport.

    A frame much larger than the viewport is decoded at reduced resolution where its codec allows it;
    otherwise a frame past the memory bound is refused (RenderTooLarge, 413).
    """
    if "PixelData" not in ds or "Rows" not in ds:
        raise RenderError("This instance has no image to render.")
    total = frame_count(ds)
    if not 1 <= frame <= total:
        raise FrameMissing(f"Frame {frame} does not exist; this instance has {total} frame(s).")
    pixels = _decode_reduced(ds, frame, options.viewport)
    if pixels is None:
        decode_check(ds, limits=limits or RenderLimits.from_settings())
        try:
            pixels = pixel_array(ds, index=frame - 1)
        except Exception as exc:  # noqa: BLE001 - decoder plugins fail in their own ways
            raise RenderError(f"The image can't be decoded ({type(exc).__name__}).") from None
    # The viewport bounds the image; the aspect ratio is kept (PS3.18 8.3.5.1.3).
    image = display_image(pixels, ds, window=options.window, fit=options.viewport)
    output = io.BytesIO()
    if options.media_type == "image/png":
        image.save(output, format="PNG")
    else:
        image.save(output, format="JPEG", quality=options.quality)
    return output.getvalue()

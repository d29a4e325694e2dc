"""Series thumbnails: a small windowed PNG of the series' middle image, stored encrypted like any object.

Rendering decodes pixel data, so this module imports pydicom (besides ``studies.dicom``, which only
reads headers). A thumbnail's object uuid is derived from the series and the instance it shows, so a
render is idempotent and a series that grew (its middle instance changed) gets a fresh thumbnail.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Sequence
from contextlib import closing
from typing import BinaryIO

import pydicom
from celery import current_app
from django.core.cache import cache
from pydicom.pixels import pixel_array

from studies.archive import objects
from studies.archive.errors import ObjectMissing
from studies.browse import selectors
from studies.dicomweb import rendering
from studies.models import Instance, Series
from tenants.models import Clinic

logger = logging.getLogger(__name__)

THUMBNAIL_SIZE = (256, 256)
# Instances up to this size are decoded in memory; larger ones are spooled to a temporary file.
SPOOL_BYTES = 64 * 1024 * 1024


def thumbnail_object_uuid(*, series: Series, instance_uuid: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(series.uuid, f"thumbnail:{instance_uuid}")


def thumbnail_render_png(source: BinaryIO) -> bytes:
    """Render a seekable DICOM file's middle frame as a PNG thumbnail (the same renderer as WADO-RS rendered).

    Raises ValueError when the file holds no image that can be decoded, and RenderTooLarge for a frame
    beyond the per-render memory bound.
    """
    header = pydicom.dcmread(source, stop_before_pixels=True, force=True)
    if "Rows" not in header or "Columns" not in header:
        raise ValueError("no image in this instance")
    rendering.decode_check(header, limits=rendering.RenderLimits.from_settings())
    frames = int(header.get("NumberOfFrames", 1) or 1)
    source.seek(0)
    # Decode only the one frame needed, even in a large multi-frame file.
    pixels = pixel_array(source, index=frames // 2)
    image = rendering.display_image(pixels, header, fit=THUMBNAIL_SIZE)
    output = io.BytesIO()
    image.save(output, format="PNG", optimize=True)
    return output.getvalue()


def series_thumbnail_render(*, clinic: Clinic, series: Series) -> str | None:
    """Render and store the series' thumbnail from its middle image; return its object key.

    Does nothing when the current thumbnail already shows that instance, or when the series has no
    image (structured reports, for instance). Raises StorageUnavailable / ObjectCorrupt from the archive.
    """
    instance = selectors.series_thumbnail_instance(clinic=clinic, series=series)
    if instance is None:
        return None
    object_uuid = thumbnail_object_uuid(series=series, instance_uuid=instance.uuid)
    key = objects.object_key_for(clinic=clinic, object_uuid=object_uuid)
    if series.thumbnail_key == key:
        return key
    with closing(objects.object_open_seekable(clinic=clinic, key=instance.object_key, max_memory=SPOOL_BYTES)) as spool:
        try:
            png = thumbnail_render_png(spool)
        except Exception as exc:  # noqa: BLE001
            # Pixel decoding fails in many library-specific ways (unsupported transfer syntax, odd
            # headers); a missing thumbnail must never fail anything else, so note it and move on.
            logger.warning("no thumbnail for series %s: %s", series.uuid, type(exc).__name__)
            return None
    stored = objects.object_put(clinic=clinic, source=io.BytesIO(png), object_uuid=object_uuid)
    previous = series.thumbnail_key
    updated = (
        Series.objects.for_clinic(clinic).filter(pk=series.pk, thumbnail_key=previous).update(thumbnail_key=stored.key)
    )
    if not updated:
        # Another render won the race; its thumbnail stays.
        if Series.objects.for_clinic(clinic).filter(pk=series.pk).exclude(thumbnail_key=stored.key).exists():
            _delete_quietly(clinic=clinic, key=stored.key)
        return None
    series.thumbnail_key = stored.key
    if previous and previous != stored.key:
        _delete_quietly(clinic=clinic, key=previous)
    return stored.key


def _delete_quietly(*, clinic: Clinic, key: str) -> None:
    try:
        objects.object_delete(clinic=clinic, key=key)
    except ObjectMissing:
        pass


# A series' thumbnail is rendered once the series has stopped growing for this long, not once per file.
THUMBNAIL_DEBOUNCE_SECONDS = 15
# Sent by name (browse.tasks imports this module); the name predates the browse package.
SERIES_THUMBNAIL_TASK = "studies.tasks.series_thumbnail_render"


def series_thumbnails_schedule(clinic: Clinic, instances: Sequence[Instance]) -> None:
    """Queue one render per series of a committed ingest batch, after a quiet period (an ingest hook).

    Debounced across batches and processes (the cache is shared): the render is scheduled after the
    period, so it sees the files that arrived meanwhile.
    """
    for series_id in sorted({i.series_id for i in instances}):
        if cache.add(f"thumbnail-pending:{series_id}", 1, timeout=THUMBNAIL_DEBOUNCE_SECONDS):
            current_app.tasks[SERIES_THUMBNAIL_TASK].apply_async(
                kwargs={"clinic_id": clinic.pk, "series_id": series_id}, countdown=THUMBNAIL_DEBOUNCE_SECONDS
            )

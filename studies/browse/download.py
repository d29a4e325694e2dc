"""Stream a study or a series as a ZIP of its original DICOM files, decrypting on the fly.

Nothing is held whole in memory or written to disk: each instance is read from the archive in chunks
and fed to ``zipfile`` writing into a buffer that the response generator drains after every chunk.
Members are stored (DICOM pixel data rarely shrinks, and storing keeps the download fast); ZIP64 is
used for members and archives past 4 GB. Member names carry no patient data: only series and
instance numbers and the modality.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from contextlib import closing
from typing import Any

from django.http import StreamingHttpResponse

from studies.archive import objects
from studies.models import Instance
from tenants.models import Clinic

CHUNK_SIZE = 1024 * 1024


class _StreamBuffer:
    """A write-only, unseekable file that hands what was written to the response generator."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        if data:
            self._chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None  # nothing is held: the response generator has taken every chunk

    def drain(self) -> Iterator[bytes]:
        chunks, self._chunks = self._chunks, []
        yield from chunks


def member_names(instances: Iterable[Instance]) -> Iterator[tuple[str, Instance]]:
    """Name each instance's member: ``series-0003-CT/instance-00012.dcm`` (unique within the ZIP)."""
    used: set[str] = set()
    series_folders: dict[int, str] = {}
    for position, instance in enumerate(instances, start=1):
        series = instance.series
        folder = series_folders.get(series.pk)
        if folder is None:
            number = series.series_number if series.series_number is not None else len(series_folders) + 1
            modality = "".join(c for c in series.modality if c.isalnum())[:16] or "OT"
            folder = f"series-{number:04d}-{modality}"
            while folder in series_folders.values():
                folder += "b"
            series_folders[series.pk] = folder
        number = instance.instance_number if instance.instance_number is not None else position
        name = f"{folder}/instance-{number:05d}.dcm"
        suffix = 1
        while name in used:
            suffix += 1
            name = f"{folder}/instance-{number:05d}-{suffix}.dcm"
        used.add(name)
        yield name, instance


def zip_stream(*, clinic: Clinic, instances: Iterable[Instance], root: str) -> Iterator[bytes]:
    """Yield the bytes of a ZIP holding each instance's original file under ``root/``.

    Raises ObjectCorrupt / ObjectMissing / StorageUnavailable from the archive mid-stream: the
    response is then cut short, so the client sees a broken download rather than a wrong file.
    """
    buffer = _StreamBuffer()
    with zipfile.ZipFile(buffer, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, instance in member_names(instances):
            info = zipfile.ZipInfo(f"{root}/{name}", date_time=instance.stored_at.timetuple()[:6])
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            info.file_size = instance.size_bytes
            force_zip64 = instance.size_bytes >= zipfile.ZIP64_LIMIT
            with closing(objects.object_open(clinic=clinic, key=instance.object_key)) as source, \
                    archive.open(info, mode="w", force_zip64=force_zip64) as member:
                while chunk := source.read(CHUNK_SIZE):
                    member.write(chunk)
                    yield from buffer.drain()
            yield from buffer.drain()
    yield from buffer.drain()


def zip_response(*, clinic: Clinic, instances: Any, filename: str) -> StreamingHttpResponse:
    """A streamed ZIP download of ``instances`` (a queryset), never cached by browsers or proxies."""
    stream = zip_stream(clinic=clinic, instances=instances.iterator(chunk_size=500), root=filename.removesuffix(".zip"))
    response = StreamingHttpResponse(stream, content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response

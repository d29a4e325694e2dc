"""Ingest: the one store path every way in takes (uploads, ZIP members, STOW-RS, C-STORE, upload links,
anonymization jobs), and the index writer ``rebuild_index`` shares.

Read ``pipeline`` top to bottom for how an instance is stored; ``index`` writes the rows and keeps the
quota; ``origin`` says who sent it; ``hooks`` is where backup and the thumbnails plug in at start-up.
``group`` ingests together the files several threads (associations) hand in at once. ``uploads`` receives one file or a ZIP archive (staged, unpacked by a worker) for the upload page
(``views``) and the REST upload API (``api``).
"""

from __future__ import annotations

from studies.ingest.group import GroupCommit
from studies.ingest.index import (
    IndexItem,
    UsageCorrection,
    format_bytes,
    instance_index_write,
    instances_index_write,
    quota_release,
    quota_reserve,
    usage_recount,
)
from studies.ingest.lookups import Lookups
from studies.ingest.origin import Origin, OriginKind
from studies.ingest.pipeline import IngestOutcome, IngestResult, ItemResult, instance_ingest, instances_ingest

__all__ = [
    "GroupCommit",
    "IndexItem",
    "IngestOutcome",
    "IngestResult",
    "ItemResult",
    "Lookups",
    "Origin",
    "OriginKind",
    "UsageCorrection",
    "format_bytes",
    "instance_index_write",
    "instance_ingest",
    "instances_index_write",
    "instances_ingest",
    "quota_release",
    "quota_reserve",
    "usage_recount",
]

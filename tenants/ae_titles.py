"""DICOM AE titles: the one rule for the clinics' called titles and the nodes' titles (PS3.5 6.2)."""

from __future__ import annotations

import re

from portal.exceptions import PortalError

# 1 to 16 characters of the default repertoire without control characters or the backslash.
AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
AE_TITLE_LENGTH = 16


def ae_title_clean(value: str) -> str:
    """Return the AE title without padding; raise PortalError if DICOM does not allow it."""
    title = (value or "").strip()
    if not title or not AE_TITLE_RE.match(title):
        raise PortalError("An AE title is 1 to 16 characters: letters, digits, spaces or punctuation, no backslash.")
    return title


def default_ae_title(slug: str) -> str:
    """The clinic's called AE title by default: its slug, upper-cased, at most 16 characters.

    A hyphen is legal in an AE title (PS3.5 6.2), so ``clinic-a`` is called ``CLINIC-A``. Clinics
    created when hyphens were replaced by underscores keep the title their modalities are set up with.
    """
    return slug.upper()[:AE_TITLE_LENGTH]

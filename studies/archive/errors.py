"""Errors of the encrypted archive.

Messages name opaque object keys and key ids only, never patient data, so they are safe to log and
to show to an operator.
"""

from __future__ import annotations

from http import HTTPStatus

from portal.exceptions import PortalError, Transient


class ArchiveError(PortalError):
    """Something went wrong storing or reading an encrypted object."""

    status = HTTPStatus.INTERNAL_SERVER_ERROR
    code = "archive_error"


class StorageUnavailable(ArchiveError, Transient):
    """A store could not be reached or refused the request; transient, safe to retry."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "storage_unavailable"


class StorageFull(StorageUnavailable):
    """The store has no room left (a full disk, or less free space than PRIMARY_STORE_MIN_FREE_BYTES).

    Retryable like any StorageUnavailable: senders keep their copy and send it again later.
    """

    code = "storage_full"


class ObjectMissing(ArchiveError):
    """The store answered, but holds no object under that key."""

    code = "object_missing"


class ObjectCorrupt(ArchiveError):
    """The object failed authentication: tampered, truncated, extended, reordered or swapped."""

    code = "object_corrupt"


class KeyUnavailable(ArchiveError):
    """A clinic key cannot be unwrapped: unknown key id, or its master key is not in MASTER_KEYS."""

    code = "key_unavailable"

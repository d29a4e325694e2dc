"""Domain errors raised by ingest (browser upload, STOW-RS, C-STORE all share them)."""

from __future__ import annotations

from http import HTTPStatus

from portal.exceptions import PortalError
from studies.archive.errors import StorageUnavailable


class InvalidDicom(PortalError):
    """The file is not DICOM, or is truncated or malformed; ``message`` says why."""

    status = HTTPStatus.BAD_REQUEST
    code = "invalid_dicom"


class InstanceConflict(PortalError):
    """An instance with this SOP Instance UID is already stored with different content."""

    status = HTTPStatus.CONFLICT
    code = "instance_conflict"


class QuotaExceeded(PortalError):
    """Storing the file would pass the clinic's storage quota; ``message`` says how much is left."""

    status = HTTPStatus.INSUFFICIENT_STORAGE
    code = "quota_exceeded"


class NotDicom(InvalidDicom):
    """The file is not DICOM at all (a readme, a picture, an archive); folders and ZIPs skip these."""

    code = "not_dicom"


class DicomDirectory(InvalidDicom):
    """The file is a DICOMDIR, the index of a CD or DVD: nothing to store, skipped."""

    code = "dicomdir"


class InstanceHeld(InvalidDicom):
    """The file was kept in quarantine for review instead of being filed (``studies.admission``)."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "held_for_review"


class PatientMismatch(InstanceHeld):
    """The file's patient differs from that of the stored study with its Study Instance UID: held for review."""

    code = "patient_mismatch"


class StudyBeingPurged(StorageUnavailable):
    """The file's study is being erased from the trash right now; sending again shortly stores it anew.

    A StorageUnavailable, so every way in answers it as "try again" (upload 503, STOW processing failure,
    C-STORE 0xA700) and the ZIP task retries it.
    """

    code = "study_being_purged"
class AnnouncedUidMismatch(PortalError):
    """The file's SOP Instance UID is not the one its sender announced (C-STORE's Affected SOP Instance UID).

    Storing it would let the sender believe we hold the announced instance and delete its own copy.
    """

    status = HTTPStatus.CONFLICT
    code = "announced_uid_mismatch"


class StudyMismatch(PortalError):
    """The instance belongs to another study than the one it was sent to (STOW-RS to one study)."""

    status = HTTPStatus.CONFLICT
    code = "study_mismatch"

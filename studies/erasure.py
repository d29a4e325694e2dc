"""Erasing a clinic's images for good: the data's side of destroying a canceled clinic's data.

Billing decides *when* (the retention period after cancelation has ended) and calls
``clinic_images_erase``; what exists and how it is erased is known here, beside the data. Runs on the
replica-admin worker, the one holding the replica's delete rights. Safe to run twice. Raises
``StorageUnavailable`` (a ``portal.exceptions.Transient``) when a store is unreachable: retry later.
"""

from __future__ import annotations

from django.utils import timezone

from studies.archive import keys as archive_keys
from studies.archive import stores
from studies.browse import services as browse_services
from studies.models import ClinicKey, Study
from studies.quarantine import services as quarantine
from tenants.models import Clinic


def clinic_images_erase(*, clinic: Clinic) -> None:
    """Erase the held instances, then purge every study from both stores (objects, index rows, quota), then
    the clinic's keys: the wrapped key documents in both stores and the key rows. Without its key no copy
    that might survive anywhere (a replica version kept by Object Lock, a backup of the database) can be read.
    """
    # Instances held for review are stored too (studies.quarantine): erased first, so none is filed into a
    # study after the purge below has passed it.
    quarantine.quarantine_destroy_all(clinic=clinic)
    Study.objects.for_clinic(clinic).filter(deleted_at__isnull=True).update(deleted_at=timezone.now())
    for study_id in Study.objects.for_clinic(clinic).values_list("pk", flat=True):
        browse_services.study_purge(clinic=clinic, study_id=study_id)
    for row in ClinicKey.objects.for_clinic(clinic):
        document = archive_keys.key_document_key(clinic_uuid=clinic.uuid, key_id=row.key_id)
        for store_name in stores.STORE_NAMES:
            stores.get_store(store_name).delete(document)
    ClinicKey.objects.for_clinic(clinic).delete()
    archive_keys.key_cache_clear()

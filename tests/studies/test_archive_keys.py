"""Clinic keys, master keys and `manage.py rotate_master_key`."""

from __future__ import annotations

import base64
import io
import json
import os
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command

from studies.archive import keys, objects, stores
from studies.archive.errors import KeyUnavailable
from studies.models import ClinicKey


def master(key_id: str) -> str:
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


@pytest.fixture
def old_master(settings) -> str:
    entry = master("old")
    settings.MASTER_KEYS = entry
    return entry


def put(clinic, data: bytes) -> objects.StoredObject:
    return objects.object_put(clinic=clinic, source=io.BytesIO(data), object_uuid=uuid.uuid4())


def read(clinic, key: str) -> bytes:
    with objects.object_open(clinic=clinic, key=key) as stream:
        return stream.read()


def rotate(settings, *entries: str) -> str:
    settings.MASTER_KEYS = ",".join(entries)
    keys.key_cache_clear()
    out = io.StringIO()
    call_command("rotate_master_key", stdout=out, stderr=io.StringIO())
    keys.key_cache_clear()
    return out.getvalue()


def test_wrapped_key_in_the_database_is_not_the_key(clinic, old_master):
    key_id, key = keys.clinic_key_get(clinic)

    row = ClinicKey.objects.for_clinic(clinic).get()
    assert row.key_id == key_id
    assert row.master_key_id == "old"
    assert key not in bytes(row.wrapped_key)
    assert len(key) == 32


def test_rotation_rewraps_keys_and_objects_stay_readable(clinic, other_clinic, settings, old_master):
    ours, theirs = put(clinic, b"ours" * 1000), put(other_clinic, b"theirs")
    wrapped_before = bytes(ClinicKey.objects.for_clinic(clinic).get().wrapped_key)
    object_before = stores.get_store("primary").path(ours.key).read_bytes()

    output = rotate(settings, master("new"), old_master)

    assert set(ClinicKey.objects.values_list("master_key_id", flat=True)) == {"new"}
    assert bytes(ClinicKey.objects.for_clinic(clinic).get().wrapped_key) != wrapped_before
    assert stores.get_store("primary").path(ours.key).read_bytes() == object_before
    assert read(clinic, ours.key) == b"ours" * 1000
    assert read(other_clinic, theirs.key) == b"theirs"
    assert "Re-wrapped 2" in output
    assert "Master key old wraps no clinic key any more" in output


def test_old_master_key_can_be_removed_after_rotation(clinic, settings, old_master):
    stored = put(clinic, b"kept readable")
    new = master("new")
    rotate(settings, new, old_master)

    settings.MASTER_KEYS = new
    keys.key_cache_clear()

    assert read(clinic, stored.key) == b"kept readable"


def test_removing_the_old_master_key_before_rotation_fails_clearly(clinic, settings, old_master):
    stored = put(clinic, b"needs the old key")

    settings.MASTER_KEYS = master("new")
    keys.key_cache_clear()

    with pytest.raises(KeyUnavailable, match="master key 'old', which is not in MASTER_KEYS"):
        read(clinic, stored.key)


def test_old_master_key_still_reads_before_rotation(clinic, settings, old_master):
    stored = put(clinic, b"before rotation")

    settings.MASTER_KEYS = ",".join([master("new"), old_master])
    keys.key_cache_clear()

    assert read(clinic, stored.key) == b"before rotation"


def test_rotation_with_a_missing_master_key_reports_failure_and_changes_nothing(clinic, settings, old_master):
    put(clinic, b"x")
    wrapped_before = bytes(ClinicKey.objects.for_clinic(clinic).get().wrapped_key)
    settings.MASTER_KEYS = master("new")
    keys.key_cache_clear()

    with pytest.raises(CommandError, match="could not be re-wrapped"):
        call_command("rotate_master_key", stdout=io.StringIO(), stderr=io.StringIO())

    row = ClinicKey.objects.for_clinic(clinic).get()
    assert row.master_key_id == "old"
    assert bytes(row.wrapped_key) == wrapped_before


def test_rotation_is_idempotent(clinic, settings, old_master):
    put(clinic, b"x")
    new = master("new")
    rotate(settings, new, old_master)
    wrapped = bytes(ClinicKey.objects.for_clinic(clinic).get().wrapped_key)

    output = rotate(settings, new, old_master)

    assert "Re-wrapped 0" in output
    assert bytes(ClinicKey.objects.for_clinic(clinic).get().wrapped_key) == wrapped


def test_rotation_publishes_the_rewrapped_key_to_the_replica(clinic, settings, old_master):
    put(clinic, b"x")
    new = master("new")

    rotate(settings, new, old_master)

    row = ClinicKey.objects.for_clinic(clinic).get()
    document_key = keys.key_document_key(clinic_uuid=clinic.uuid, key_id=row.key_id)
    with stores.get_store("replica").open(document_key) as handle:
        document = json.loads(handle.read())
    assert document["master_key_id"] == "new"
    settings.MASTER_KEYS = new
    assert keys.key_document_unwrap(document) == (clinic.uuid, row.key_id, keys.clinic_key_unwrap(row.key_id))


def test_replica_key_document_and_master_key_alone_recover_the_key(clinic, old_master):
    key_id, key = keys.clinic_key_get(clinic)

    with stores.get_store("replica").open(keys.key_document_key(clinic_uuid=clinic.uuid, key_id=key_id)) as handle:
        document = handle.read()

    assert keys.key_document_unwrap(document) == (clinic.uuid, key_id, key)
    assert b"wrapped_key" in document and key not in document


def test_wrapped_key_moved_to_another_clinic_does_not_unwrap(clinic, other_clinic, old_master):
    keys.clinic_key_get(clinic)
    keys.clinic_key_get(other_clinic)
    ours = ClinicKey.objects.for_clinic(clinic).get()
    theirs = ClinicKey.objects.for_clinic(other_clinic).get()
    theirs.wrapped_key = ours.wrapped_key
    theirs.save()
    keys.key_cache_clear()

    with pytest.raises(KeyUnavailable):
        keys.clinic_key_unwrap(theirs.key_id)


def test_clinic_key_import_restores_a_lost_row(clinic, old_master):
    stored = put(clinic, b"restore me")
    row = ClinicKey.objects.for_clinic(clinic).get()
    with stores.get_store("replica").open(keys.key_document_key(clinic_uuid=clinic.uuid, key_id=row.key_id)) as h:
        document = h.read()
    row.delete()
    keys.key_cache_clear()

    keys.clinic_key_import(clinic=clinic, document=document)

    assert read(clinic, stored.key) == b"restore me"


def test_clinic_key_import_refuses_another_clinics_document(clinic, other_clinic, old_master):
    key_id, _ = keys.clinic_key_get(other_clinic)
    with stores.get_store("replica").open(keys.key_document_key(clinic_uuid=other_clinic.uuid, key_id=key_id)) as h:
        document = h.read()

    with pytest.raises(KeyUnavailable):
        keys.clinic_key_import(clinic=clinic, document=document)


@pytest.mark.parametrize("document", [b"[]", b'"a string"', b"42", "null"])
def test_a_key_document_that_is_json_but_not_an_object_is_refused_as_unavailable(document):
    # Before: AttributeError from document.get, which a restore does not catch as a missing key.
    with pytest.raises(KeyUnavailable, match="not a JSON object"):
        keys.key_document_unwrap(document)


@pytest.mark.parametrize(
    "value",
    ["", "nokey", "id:not-base64!", f"id:{base64.b64encode(b'short').decode()}", "a b:" + "A" * 44],
)
def test_malformed_master_keys_are_refused(settings, value):
    settings.MASTER_KEYS = value

    with pytest.raises(ImproperlyConfigured):
        keys.master_key_current()


def test_duplicate_master_key_ids_are_refused(settings):
    settings.MASTER_KEYS = ",".join([master("same"), master("same")])

    with pytest.raises(ImproperlyConfigured, match="twice"):
        keys.master_keyring()


def test_generate_prints_a_usable_master_key_entry(settings):
    out = io.StringIO()

    call_command("rotate_master_key", "--generate", "2027-01", stdout=out, stderr=io.StringIO())

    settings.MASTER_KEYS = out.getvalue().strip()
    assert keys.master_key_current()[0] == "2027-01"


def test_key_created_in_a_rolled_back_transaction_is_not_reused(clinic, old_master):
    from django.db import transaction

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        lost_key_id, _ = keys.clinic_key_get(clinic)
        raise Rollback

    stored = put(clinic, b"after the rollback")

    assert stored.key_id != lost_key_id
    assert ClinicKey.objects.for_clinic(clinic).get().key_id == stored.key_id
    assert read(clinic, stored.key) == b"after the rollback"


def test_master_keys_may_be_one_per_line(settings):
    first, second = master("one"), master("two")
    settings.MASTER_KEYS = f"{first}\n{second}\n"

    assert list(keys.master_keyring()) == ["one", "two"]


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_concurrent_first_uploads_agree_on_one_clinic_key(old_master):
    import threading

    from django.db import connection

    from tests.factories import make_clinic

    clinic = make_clinic()
    barrier = threading.Barrier(4)
    results: list[str] = []
    errors: list[BaseException] = []

    def first_upload() -> None:
        try:
            barrier.wait()
            results.append(put(clinic, b"concurrent").key_id)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=first_upload) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(set(results)) == 1
    assert ClinicKey.objects.for_clinic(clinic).count() == 1

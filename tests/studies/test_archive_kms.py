"""Master keys held by AWS KMS (moto's KMS in server mode, the same endpoint as the test S3)."""

from __future__ import annotations

import base64
import io
import os
import socket
import uuid

import boto3
import pytest
from django.core.exceptions import ImproperlyConfigured

from studies.archive import keys, objects, stores
from studies.archive.errors import KeyUnavailable
from studies.models import ClinicKey

ENDPOINT = os.environ.get("TEST_S3_ENDPOINT", "")

pytestmark = pytest.mark.skipif(not ENDPOINT, reason="needs the moto endpoint of bin/with-test-services")


def kms_client():
    return boto3.client(
        "kms",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def kms_key(settings) -> str:
    settings.KMS_ACCESS_KEY_ID = "testing"
    settings.KMS_SECRET_ACCESS_KEY = "testing"
    key_id = kms_client().create_key(Description="pacs test master key")["KeyMetadata"]["KeyId"]
    keys.key_cache_clear()
    yield key_id
    keys.key_cache_clear()


def kms_uri(key_id: str, endpoint: str = ENDPOINT) -> str:
    return f"kms://{key_id}?endpoint_url={endpoint}&region_name=us-east-1"


def put(clinic, data: bytes) -> objects.StoredObject:
    return objects.object_put(clinic=clinic, source=io.BytesIO(data), object_uuid=uuid.uuid4())


def read(clinic, key: str) -> bytes:
    with objects.object_open(clinic=clinic, key=key) as stream:
        return stream.read()


def test_clinic_key_is_wrapped_by_kms_and_objects_round_trip(clinic, settings, kms_key):
    settings.MASTER_KEYS = f"prod:{kms_uri(kms_key)}"

    stored = put(clinic, b"wrapped by kms")
    keys.key_cache_clear()

    row = ClinicKey.objects.for_clinic(clinic).get()
    assert row.master_key_id == "prod"
    assert read(clinic, stored.key) == b"wrapped by kms"
    document = stores.get_store("replica").open(keys.key_document_key(clinic_uuid=clinic.uuid, key_id=row.key_id))
    assert b"AWS-KMS" in document.read()


def test_kms_wrapped_key_moved_to_another_clinic_does_not_unwrap(clinic, other_clinic, settings, kms_key):
    settings.MASTER_KEYS = kms_uri(kms_key)
    put(clinic, b"ours")
    put(other_clinic, b"theirs")
    ours = ClinicKey.objects.for_clinic(clinic).get()
    theirs = ClinicKey.objects.for_clinic(other_clinic).get()
    keys.key_cache_clear()

    ClinicKey.objects.filter(pk=theirs.pk).update(wrapped_key=bytes(ours.wrapped_key))

    with pytest.raises(KeyUnavailable, match="does not unwrap"):
        keys.clinic_key_unwrap(theirs.key_id)


def test_kms_unreachable_fails_closed_and_nothing_is_stored(clinic, settings, kms_key):
    settings.MASTER_KEYS = kms_uri(kms_key, endpoint=f"http://127.0.0.1:{free_port()}")

    with pytest.raises(KeyUnavailable, match="KMS cannot be reached"):
        put(clinic, b"never stored")

    assert not ClinicKey.objects.for_clinic(clinic).exists()
    assert not list(stores.get_store("primary").list(f"clinics/{clinic.uuid}/objects/"))


def test_kms_down_then_up_again_keeps_every_object_readable(clinic, settings, kms_key):
    settings.MASTER_KEYS = kms_uri(kms_key)
    stored = put(clinic, b"written before the outage")
    keys.key_cache_clear()
    # The same key id behind an endpoint that no longer answers: KMS is down.
    settings.MASTER_KEYS = kms_uri(kms_key, endpoint=f"http://127.0.0.1:{free_port()}")

    with pytest.raises(KeyUnavailable, match="KMS cannot be reached"):
        read(clinic, stored.key)
    with pytest.raises(KeyUnavailable):
        put(clinic, b"refused during the outage")

    settings.MASTER_KEYS = kms_uri(kms_key)
    assert read(clinic, stored.key) == b"written before the outage"
    assert len(list(stores.get_store("primary").list(f"clinics/{clinic.uuid}/objects/"))) == 1


def test_rotation_from_an_environment_key_to_kms(clinic, settings, kms_key):
    local = f"old:{base64.b64encode(os.urandom(32)).decode()}"
    settings.MASTER_KEYS = local
    stored = put(clinic, b"before the move to kms")
    kms_entry = f"kms1:{kms_uri(kms_key)}"
    settings.MASTER_KEYS = f"{kms_entry},{local}"
    keys.key_cache_clear()

    result = keys.master_key_rotate()

    assert result.is_complete and result.rewrapped
    settings.MASTER_KEYS = kms_entry
    keys.key_cache_clear()
    assert ClinicKey.objects.for_clinic(clinic).get().master_key_id == "kms1"
    assert read(clinic, stored.key) == b"before the move to kms"


def test_rotation_during_a_kms_outage_changes_nothing(clinic, settings, kms_key):
    local = f"old:{base64.b64encode(os.urandom(32)).decode()}"
    settings.MASTER_KEYS = local
    stored = put(clinic, b"kept")
    before = bytes(ClinicKey.objects.for_clinic(clinic).get().wrapped_key)
    settings.MASTER_KEYS = f"kms1:{kms_uri(kms_key, endpoint=f'http://127.0.0.1:{free_port()}')},{local}"
    keys.key_cache_clear()

    result = keys.master_key_rotate()

    assert result.failed and not result.rewrapped
    row = ClinicKey.objects.for_clinic(clinic).get()
    assert (row.master_key_id, bytes(row.wrapped_key)) == ("old", before)
    settings.MASTER_KEYS = local
    keys.key_cache_clear()
    assert read(clinic, stored.key) == b"kept"


def test_aws_kms_arn_gives_the_region_and_an_id(settings):
    settings.MASTER_KEYS = "aws-kms://arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"

    master_id, entry = keys.master_key_current()

    assert master_id == "kms-1234abcd-12ab-34cd-56ef-1234567890ab"
    assert (entry.kms_region_name, entry.is_kms) == ("eu-west-1", True)


@pytest.mark.parametrize("value", ["aws-kms://not-an-arn", "kms://?region_name=x", "k:kms://key?colour=red"])
def test_malformed_kms_uris_are_refused(settings, value):
    settings.MASTER_KEYS = value

    with pytest.raises(ImproperlyConfigured):
        keys.master_key_current()

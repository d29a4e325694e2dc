"""The object stores: a local folder and S3 (the moto server on TEST_S3_ENDPOINT)."""

from __future__ import annotations

import io
import os
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured

from studies.archive import objects, stores
from studies.archive.errors import ObjectMissing, StorageUnavailable


class FailingSource:
    """A source that breaks after some bytes, like a client that disconnects mid-upload."""

    def __init__(self, good: int) -> None:
        self.remaining = good

    def read(self, size: int = -1) -> bytes:
        if self.remaining <= 0:
            raise OSError("connection reset")
        chunk = os.urandom(min(size, self.remaining))
        self.remaining -= len(chunk)
        return chunk


@pytest.fixture(params=["local", "s3"])
def store_kind(request):
    if request.param == "s3":
        request.getfixturevalue("s3_stores")
    return request.param


def test_put_open_size_exists_list_delete(db, store_kind):
    store = stores.get_store("primary")
    data = os.urandom(100_000)

    written = store.put("clinics/c1/objects/a", io.BytesIO(data))
    store.put("clinics/c1/objects/b", io.BytesIO(b"b"))
    store.put("clinics/c2/objects/c", io.BytesIO(b"c"))

    assert written == len(data)
    with store.open("clinics/c1/objects/a") as handle:
        assert handle.read() == data
    assert store.size("clinics/c1/objects/a") == len(data)
    assert store.exists("clinics/c1/objects/b")
    assert sorted(store.list("clinics/c1/")) == ["clinics/c1/objects/a", "clinics/c1/objects/b"]
    assert sorted(store.list("clinics/c")) == ["clinics/c1/objects/a", "clinics/c1/objects/b", "clinics/c2/objects/c"]
    store.delete("clinics/c1/objects/a")
    store.delete("clinics/c1/objects/a")
    assert not store.exists("clinics/c1/objects/a")
    store.check()


def test_list_sizes_gives_each_key_under_the_prefix_with_its_stored_size(db, store_kind):
    store = stores.get_store("replica")
    store.put("clinics/c1/objects/a", io.BytesIO(b"x" * 70_000))
    store.put("clinics/c1/objects/b", io.BytesIO(b"b"))
    store.put("clinics/c1/keys/k", io.BytesIO(b"key"))
    store.put("clinics/c12/objects/c", io.BytesIO(b"c"))

    listed = sorted(store.list_sizes("clinics/c1/objects/"))

    assert listed == [("clinics/c1/objects/a", 70_000), ("clinics/c1/objects/b", 1)]
    assert sorted(store.list_sizes("clinics/c1")) == sorted(
        (key, store.size(key)) for key in store.list("clinics/c1")
    )


def test_missing_object_raises_object_missing(db, store_kind):
    store = stores.get_store("replica")

    with pytest.raises(ObjectMissing):
        store.open("clinics/x/objects/nothing")
    with pytest.raises(ObjectMissing):
        store.size("clinics/x/objects/nothing")
    assert not store.exists("clinics/x/objects/nothing")


def test_put_overwrites_atomically(db, store_kind):
    store = stores.get_store("primary")
    store.put("k/one", io.BytesIO(b"old"))

    store.put("k/one", io.BytesIO(b"new"))

    with store.open("k/one") as handle:
        assert handle.read() == b"new"


def test_failed_upload_leaves_nothing_behind(db, store_kind):
    store = stores.get_store("primary")

    with pytest.raises(OSError, match="connection reset"):
        store.put("k/broken", FailingSource(good=3 * 1024 * 1024))

    assert not store.exists("k/broken")
    assert list(store.list("k/")) == []


def test_encrypted_round_trip_through_both_stores(clinic, store_kind):
    data = os.urandom(3 * 1024 * 1024 + 5)

    stored = objects.object_put(clinic=clinic, source=io.BytesIO(data), object_uuid=uuid.uuid4())
    with stores.get_store("primary").open(stored.key) as source:
        stores.get_store("replica").put(stored.key, source)
    objects.object_delete(clinic=clinic, key=stored.key)

    with objects.object_open(clinic=clinic, key=stored.key) as stream:
        assert stream.read() == data


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a//b", "a/../b", "a/./b", "", "a/b/", "sp ace"])
def test_unsafe_keys_are_refused(db, key):
    with pytest.raises(ValueError):
        stores.get_store("primary").put(key, io.BytesIO(b"x"))


def test_local_store_leaves_no_temporary_files(db):
    store = stores.get_store("primary")

    store.put("clinics/c/objects/o", io.BytesIO(b"x" * 10))

    assert [p.name for p in store.path("clinics/c/objects/o").parent.iterdir()] == ["o"]


def test_unreachable_local_store_fails_check_and_put(db, settings, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    settings.PRIMARY_STORE_URL = (blocker / "primary").as_uri()
    store = stores.get_store("primary")

    with pytest.raises(StorageUnavailable):
        store.check()
    with pytest.raises(StorageUnavailable):
        store.put("k/x", io.BytesIO(b"x"))


def test_unreachable_s3_endpoint_raises_storage_unavailable(db, settings):
    settings.PRIMARY_STORE_URL = "s3://nowhere?endpoint_url=http://127.0.0.1:9&region_name=us-east-1&max_attempts=1"
    settings.PRIMARY_STORE_ACCESS_KEY_ID = "x"
    settings.PRIMARY_STORE_SECRET_ACCESS_KEY = "y"
    store = stores.get_store("primary")

    with pytest.raises(StorageUnavailable):
        store.check()
    with pytest.raises(StorageUnavailable):
        store.open("k/x")
    with pytest.raises(StorageUnavailable):
        store.put("k/x", io.BytesIO(b"x"))


def test_upload_to_a_missing_bucket_raises_storage_unavailable(clinic, s3_stores, settings):
    settings.PRIMARY_STORE_URL = settings.PRIMARY_STORE_URL.replace(s3_stores["primary"], "no-such-bucket-here")

    with pytest.raises(StorageUnavailable):
        objects.object_put(clinic=clinic, source=io.BytesIO(b"data"), object_uuid=uuid.uuid4())


def test_missing_bucket_fails_check(db, s3_stores, settings):
    settings.REPLICA_STORE_URL = settings.REPLICA_STORE_URL.replace(s3_stores["replica"], "no-such-bucket-here")

    with pytest.raises(StorageUnavailable):
        stores.get_store("replica").check()


def test_each_s3_store_uses_its_own_bucket_and_credentials(db, s3_stores):
    primary, replica = stores.get_store("primary"), stores.get_store("replica")

    primary.put("k/only-in-primary", io.BytesIO(b"p"))

    assert not replica.exists("k/only-in-primary")
    assert primary.bucket_name == s3_stores["primary"] and replica.bucket_name == s3_stores["replica"]
    assert primary.client._request_signer._credentials.access_key.startswith("primary-access-")
    assert replica.client._request_signer._credentials.access_key.startswith("replica-access-")


def test_large_s3_upload_goes_multipart_and_round_trips(db, s3_stores):
    store = stores.get_store("primary")
    part = stores.S3Store.PART_SIZE
    data = os.urandom(2 * part + 1000)

    store.put("k/big", io.BytesIO(data))

    head = store.client.head_object(Bucket=store.bucket_name, Key="k/big")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload's ETag names its part count
    with store.open("k/big") as handle:
        assert handle.read() == data


@pytest.mark.parametrize("url", ["ftp://host/x", "s3://", "s3://bucket?bogus=1", "file://remote-host/path"])
def test_bad_store_urls_are_refused(url):
    with pytest.raises(ImproperlyConfigured):
        stores.store_from_url(name="primary", url=url)


def test_s3_url_options_reach_the_client(settings):
    store = stores.store_from_url(
        name="replica", url="s3://bucket/prefix?endpoint_url=http://127.0.0.1:1234&region_name=eu-west-3"
    )

    assert store.client.meta.endpoint_url == "http://127.0.0.1:1234"
    assert store.client.meta.region_name == "eu-west-3"
    assert store.prefix == "prefix/"


def test_readiness_reports_an_unreachable_store_by_name(db, settings, tmp_path):
    from portal.health import readiness_problems

    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    settings.REPLICA_STORE_URL = (blocker / "replica").as_uri()

    problems = readiness_problems()

    assert "replica_store" in problems
    assert "primary_store" not in problems


def test_large_encrypted_object_uploads_to_s3_in_full_size_parts(clinic, s3_stores):
    part = stores.S3Store.PART_SIZE
    data = os.urandom(2 * part + 1000)

    stored = objects.object_put(clinic=clinic, source=io.BytesIO(data), object_uuid=uuid.uuid4())

    store = stores.get_store("primary")
    head = store.client.head_object(Bucket=store.bucket_name, Key=stored.key, PartNumber=1)
    assert head["ContentLength"] == part
    with objects.object_open(clinic=clinic, key=stored.key) as stream:
        assert stream.read() == data


def test_small_s3_object_is_one_plain_upload_and_round_trips(db, s3_stores):
    store = stores.get_store("replica")
    data = os.urandom(40_000)

    assert store.put("k/small", io.BytesIO(data)) == len(data)

    head = store.client.head_object(Bucket=store.bucket_name, Key="k/small")
    assert "-" not in head["ETag"]  # not a multipart upload
    with store.open("k/small") as handle:
        assert handle.read() == data


def test_threads_share_one_s3_client(db, s3_stores):
    """S3Storage made a boto3 session and client for every new thread (about 0.1 s of CPU each): the
    replication worker's copy threads spent more on that than on their copies."""
    import threading

    store = stores.get_store("replica")
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(store.client)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert all(client is store.client for client in seen)


def test_whole_object_puts_skip_the_100_continue_round_trip(db, s3_stores):
    """An object sent in one PutObject is already in memory: waiting for the endpoint's "100 Continue"
    before its body only added a round trip to every copy (a synchronous replica write's latency). The
    parts of a multipart upload still ask first, as boto3 does."""
    store = stores.get_store("replica")
    sent: list[tuple[str, str | None]] = []

    def capture(request, **kwargs):
        sent.append((request.method, request.headers.get("Expect")))

    store.client.meta.events.register("before-send.s3", capture)
    try:
        store.put("k/whole", io.BytesIO(os.urandom(40_000)))
        whole = list(sent)
        sent.clear()
        store.put("k/parts", io.BytesIO(os.urandom(stores.S3Store.PART_SIZE + 1000)))
    finally:
        store.client.meta.events.unregister("before-send.s3", capture)

    assert whole == [("PUT", None)]
    assert ("PUT", b"100-continue") in sent  # the parts

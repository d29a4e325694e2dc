"""The encrypted archive service: round trips, tamper detection and failover to the replica."""

from __future__ import annotations

import hashlib
import io
import os
import uuid

import pytest

from studies.archive import crypto, keys, objects, stores
from studies.archive.errors import ObjectCorrupt, ObjectMissing
from studies.backup import verification
from studies.models import ClinicKey

SEGMENT = 4096
SEALED = SEGMENT + crypto.TAG_SIZE


@pytest.fixture(autouse=True)
def _small_segments(settings):
    # Small segments make multi-segment objects cheap; the format is the same at 1 MiB.
    settings.ARCHIVE_SEGMENT_SIZE = SEGMENT


def put(clinic, data: bytes, object_uuid: uuid.UUID | None = None) -> objects.StoredObject:
    return objects.object_put(clinic=clinic, source=io.BytesIO(data), object_uuid=object_uuid or uuid.uuid4())


def read(clinic, key: str, **kwargs) -> bytes:
    with objects.object_open(clinic=clinic, key=key, **kwargs) as stream:
        return stream.read()


def primary_path(key: str):
    return stores.get_store("primary").path(key)


def header_size(stored: objects.StoredObject) -> int:
    return crypto.ciphertext_size(plaintext_size=0, key_id=stored.key_id, segment_size=SEGMENT) - crypto.TAG_SIZE


def flip(path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize(
    "size",
    [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT, 3 * SEGMENT + 17],
    ids=["empty", "one-byte", "under-segment", "one-segment", "over-segment", "three-segments", "partial-last"],
)
def test_object_round_trips_at_every_size(clinic, size):
    data = os.urandom(size)

    stored = put(clinic, data)

    assert read(clinic, stored.key) == data
    assert stored.size_bytes == size
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert stores.get_store("primary").size(stored.key) == crypto.ciphertext_size(
        plaintext_size=size, key_id=stored.key_id, segment_size=SEGMENT
    )


def test_large_object_round_trips_with_default_segments(clinic, settings):
    settings.ARCHIVE_SEGMENT_SIZE = crypto.DEFAULT_SEGMENT_SIZE
    data = os.urandom(5 * crypto.DEFAULT_SEGMENT_SIZE + 12345)

    stored = put(clinic, data)

    with objects.object_open(clinic=clinic, key=stored.key) as stream:
        pieces = []
        while chunk := stream.read(70_000):
            pieces.append(chunk)
    assert b"".join(pieces) == data


def test_object_key_carries_only_opaque_ids(clinic):
    object_uuid = uuid.uuid4()

    stored = put(clinic, b"DICM data", object_uuid)

    assert stored.key == f"clinics/{clinic.uuid}/objects/{object_uuid}"
    assert primary_path(stored.key).is_file()


def test_stored_bytes_are_not_the_plaintext(clinic):
    data = b"PATIENT^NAME " * 1000

    stored = put(clinic, data)

    assert b"PATIENT^NAME" not in primary_path(stored.key).read_bytes()


def test_first_upload_creates_one_clinic_key_and_publishes_it_to_both_stores(clinic):
    first = put(clinic, b"one")
    second = put(clinic, b"two")

    row = ClinicKey.objects.for_clinic(clinic).get()
    assert first.key_id == second.key_id == row.key_id
    document_key = f"clinics/{clinic.uuid}/keys/{row.key_id}"
    assert stores.get_store("primary").exists(document_key)
    assert stores.get_store("replica").exists(document_key)


def test_clinics_get_different_keys(clinic, other_clinic):
    ours = put(clinic, b"a")
    theirs = put(other_clinic, b"a")

    assert ours.key_id != theirs.key_id


@pytest.mark.parametrize(
    "where",
    [
        "magic",
        "version",
        "segment-size",
        "key-id",
        "salt",
        "nonce-prefix",
        "first-segment",
        "middle-segment",
        "last-segment",
        "first-tag",
        "last-tag",
    ],
)
def test_a_flipped_byte_anywhere_is_detected(clinic, where):
    data = os.urandom(3 * SEGMENT + 100)
    stored = put(clinic, data)
    h = header_size(stored)
    key_id_length = len(stored.key_id)
    offsets = {
        "magic": 0,
        "version": 4,
        "segment-size": 7,
        "key-id": 10 + key_id_length - 1,
        "salt": 10 + key_id_length + 5,
        "nonce-prefix": h - 1,
        "first-segment": h + 10,
        "middle-segment": h + SEALED + 100,
        "last-segment": h + 3 * SEALED + 5,
        "first-tag": h + SEALED - 1,
        "last-tag": h + 3 * SEALED + 100 + crypto.TAG_SIZE - 1,
    }
    flip(primary_path(stored.key), offsets[where])

    with pytest.raises(ObjectCorrupt):
        read(clinic, stored.key, store="primary")


def test_corruption_in_a_later_segment_releases_only_authenticated_bytes(clinic):
    data = os.urandom(3 * SEGMENT)
    stored = put(clinic, data)
    flip(primary_path(stored.key), header_size(stored) + 2 * SEALED + 1)
    received = bytearray()

    with pytest.raises(ObjectCorrupt), objects.object_open(clinic=clinic, key=stored.key, store="primary") as stream:
        while chunk := stream.read(1000):
            received += chunk

    # Only a prefix of the two authenticated segments ever reached the caller.
    assert data[: 2 * SEGMENT].startswith(bytes(received))
    assert len(received) > SEGMENT


@pytest.mark.parametrize("cut", ["last-segment", "at-segment-boundary", "inside-header", "everything-but-header"])
def test_truncated_object_is_detected(clinic, cut):
    stored = put(clinic, os.urandom(3 * SEGMENT + 50))
    path = primary_path(stored.key)
    h = header_size(stored)
    lengths = {
        "last-segment": h + 3 * SEALED + 10,
        "at-segment-boundary": h + 2 * SEALED,
        "inside-header": h - 3,
        "everything-but-header": h,
    }
    with open(path, "r+b") as handle:
        handle.truncate(lengths[cut])

    with pytest.raises(ObjectCorrupt):
        read(clinic, stored.key, store="primary")


def test_truncation_of_a_whole_final_segment_is_detected_at_the_end(clinic):
    data = os.urandom(3 * SEGMENT)
    stored = put(clinic, data)
    with open(primary_path(stored.key), "r+b") as handle:
        handle.truncate(header_size(stored) + 2 * SEALED)
    received = bytearray()

    with pytest.raises(ObjectCorrupt), objects.object_open(clinic=clinic, key=stored.key, store="primary") as stream:
        while chunk := stream.read(1000):
            received += chunk

    assert data[:SEGMENT].startswith(bytes(received))


@pytest.mark.parametrize("extra_size", [1, crypto.TAG_SIZE, SEALED], ids=["byte", "tag", "segment"])
def test_appended_bytes_are_detected(clinic, extra_size):
    extra = os.urandom(extra_size)
    stored = put(clinic, os.urandom(2 * SEGMENT))
    with open(primary_path(stored.key), "ab") as handle:
        handle.write(extra)

    with pytest.raises(ObjectCorrupt):
        read(clinic, stored.key, store="primary")


def test_reordered_segments_are_detected(clinic):
    stored = put(clinic, os.urandom(3 * SEGMENT + 1))
    path = primary_path(stored.key)
    h = header_size(stored)
    raw = path.read_bytes()
    first, second = raw[h : h + SEALED], raw[h + SEALED : h + 2 * SEALED]
    path.write_bytes(raw[:h] + second + first + raw[h + 2 * SEALED :])

    with pytest.raises(ObjectCorrupt):
        read(clinic, stored.key, store="primary")


def test_two_swapped_objects_are_both_detected(clinic):
    one, two = put(clinic, b"first object" * 100), put(clinic, b"second object" * 100)
    path_one, path_two = primary_path(one.key), primary_path(two.key)
    bytes_one, bytes_two = path_one.read_bytes(), path_two.read_bytes()
    path_one.write_bytes(bytes_two)
    path_two.write_bytes(bytes_one)

    for stored in (one, two):
        with pytest.raises(ObjectCorrupt):
            read(clinic, stored.key, store="primary")


def test_object_copied_to_another_clinic_does_not_decrypt(clinic, other_clinic):
    ours = put(clinic, b"our study")
    put(other_clinic, b"make sure the other clinic has a key too")
    copied_key = f"clinics/{other_clinic.uuid}/objects/{uuid.uuid4()}"
    stores.get_store("primary").put(copied_key, io.BytesIO(primary_path(ours.key).read_bytes()))

    with pytest.raises(ObjectCorrupt):
        read(other_clinic, copied_key, store="primary")


def test_segment_spliced_from_another_object_of_the_same_clinic_is_detected(clinic):
    one, two = put(clinic, os.urandom(2 * SEGMENT)), put(clinic, os.urandom(2 * SEGMENT))
    h = header_size(one)
    raw_one, raw_two = primary_path(one.key).read_bytes(), primary_path(two.key).read_bytes()
    primary_path(one.key).write_bytes(raw_one[: h + SEALED] + raw_two[h + SEALED :])

    with pytest.raises(ObjectCorrupt):
        read(clinic, one.key, store="primary")


def test_another_clinics_key_reads_as_missing(clinic, other_clinic):
    theirs = put(other_clinic, b"their study")

    with pytest.raises(ObjectMissing):
        objects.object_open(clinic=clinic, key=theirs.key)


def test_missing_object_everywhere_raises_object_missing(clinic):
    key = objects.object_key_for(clinic=clinic, object_uuid=uuid.uuid4())

    with pytest.raises(ObjectMissing):
        objects.object_open(clinic=clinic, key=key)


def test_not_an_archive_object_is_corrupt(clinic):
    key = objects.object_key_for(clinic=clinic, object_uuid=uuid.uuid4())
    stores.get_store("primary").put(key, io.BytesIO(b"DICM plain file, never encrypted"))

    with pytest.raises(ObjectCorrupt):
        read(clinic, key, store="primary")


def test_object_delete_removes_it_and_is_idempotent(clinic):
    stored = put(clinic, b"to delete")

    objects.object_delete(clinic=clinic, key=stored.key)
    objects.object_delete(clinic=clinic, key=stored.key)

    assert not stores.get_store("primary").exists(stored.key)


def test_object_delete_refuses_another_clinics_object(clinic, other_clinic):
    theirs = put(other_clinic, b"theirs")

    with pytest.raises(ObjectMissing):
        objects.object_delete(clinic=clinic, key=theirs.key)

    assert stores.get_store("primary").exists(theirs.key)


def replicate(key: str) -> None:
    with stores.get_store("primary").open(key) as source:
        stores.get_store("replica").put(key, source)


@pytest.fixture
def failures(monkeypatch):
    calls: list[tuple[object, str]] = []
    monkeypatch.setattr(objects, "on_primary_read_failure", lambda clinic, key: calls.append((clinic, key)))
    return calls


def test_missing_primary_object_is_read_from_the_replica(clinic, failures):
    data = os.urandom(2 * SEGMENT + 5)
    stored = put(clinic, data)
    replicate(stored.key)
    primary_path(stored.key).unlink()

    assert read(clinic, stored.key) == data
    assert failures == [(clinic, stored.key)]


def test_corruption_mid_stream_continues_from_the_replica(clinic, failures):
    data = os.urandom(4 * SEGMENT)
    stored = put(clinic, data)
    replicate(stored.key)
    flip(primary_path(stored.key), header_size(stored) + 3 * SEALED + 7)

    with objects.object_open(clinic=clinic, key=stored.key) as stream:
        received = b"".join(iter(lambda: stream.read(1500), b""))

    assert received == data
    assert failures == [(clinic, stored.key)]


def test_truncated_primary_is_served_from_the_replica(clinic, failures):
    data = os.urandom(2 * SEGMENT)
    stored = put(clinic, data)
    replicate(stored.key)
    with open(primary_path(stored.key), "r+b") as handle:
        handle.truncate(header_size(stored) + SEALED)

    assert read(clinic, stored.key) == data
    assert len(failures) == 1


def test_unreachable_primary_is_served_from_the_replica(clinic, failures, settings):
    data = b"still readable"
    stored = put(clinic, data)
    replicate(stored.key)
    blocker = stores.get_store("primary").root.parent / "not-a-folder"
    blocker.write_bytes(b"")
    settings.PRIMARY_STORE_URL = (blocker / "primary").as_uri()

    assert read(clinic, stored.key) == data
    assert len(failures) == 1


def test_corrupt_primary_and_no_replica_raises_corrupt(clinic, failures):
    stored = put(clinic, os.urandom(100))
    flip(primary_path(stored.key), header_size(stored) + 3)

    with pytest.raises(ObjectCorrupt):
        read(clinic, stored.key)

    assert len(failures) == 1


def test_a_failing_repair_hook_does_not_break_the_read(clinic, monkeypatch):
    def broken_hook(clinic, key):
        raise RuntimeError("broker down")

    monkeypatch.setattr(objects, "on_primary_read_failure", broken_hook)
    stored = put(clinic, b"data")
    replicate(stored.key)
    primary_path(stored.key).unlink()

    assert read(clinic, stored.key) == b"data"


def test_object_digest_reads_one_store_to_its_end(clinic):
    data = os.urandom(SEGMENT * 2 + 3)
    stored = put(clinic, data)
    replicate(stored.key)
    primary_path(stored.key).unlink()

    digest = verification.object_digest(clinic=clinic, key=stored.key, store="replica")

    assert digest == (hashlib.sha256(data).hexdigest(), len(data)) == (stored.sha256, stored.size_bytes)


def test_object_open_seekable_supports_seeking(clinic):
    data = os.urandom(3 * SEGMENT)
    stored = put(clinic, data)

    with objects.object_open_seekable(clinic=clinic, key=stored.key) as handle:
        handle.seek(SEGMENT + 10)
        assert handle.read(20) == data[SEGMENT + 10 : SEGMENT + 30]


def test_reads_after_a_failed_segment_keep_failing(clinic):
    stored = put(clinic, os.urandom(3 * SEGMENT))
    flip(primary_path(stored.key), header_size(stored) + SEALED + 5)
    raw = stores.get_store("primary").open(stored.key)
    header = crypto.header_read(raw)
    reader = crypto.DecryptingReader(
        raw,
        header=header,
        clinic_key=keys.clinic_key_for_object(clinic=clinic, key_id=header.key_id),
        clinic_uuid=clinic.uuid,
        object_key=stored.key,
    )
    assert len(reader.read(SEGMENT)) == SEGMENT

    for _ in range(3):
        with pytest.raises(ObjectCorrupt):
            reader.read(SEGMENT)
    reader.close()


def test_corrupt_primary_and_corrupt_replica_mid_stream_raises_corrupt(clinic, failures):
    data = os.urandom(3 * SEGMENT)
    stored = put(clinic, data)
    replicate(stored.key)
    flip(primary_path(stored.key), header_size(stored) + 2 * SEALED + 1)
    flip(stores.get_store("replica").path(stored.key), header_size(stored) + SEALED + 1)

    with pytest.raises(ObjectCorrupt), objects.object_open(clinic=clinic, key=stored.key) as stream:
        while stream.read(1000):
            pass

    assert len(failures) == 1


# ObjectStreams: many objects read one after another through two shared ciphertext buffers (WADO-RS).


def stream_all(streams: objects.ObjectStreams, key: str) -> bytes:
    source = streams.open(key)
    try:
        return b"".join(iter(source.read_chunk, b""))
    finally:
        source.close()


def test_object_streams_read_objects_of_every_size_exactly_one_after_another(clinic):
    datas = [os.urandom(size) for size in (0, 1, SEGMENT, 3 * SEGMENT + 17, SEGMENT - 1, 5 * SEGMENT)]
    stored = [put(clinic, data) for data in datas]
    streams = objects.ObjectStreams(clinic=clinic, key_ids={s.key_id for s in stored})

    received = [stream_all(streams, s.key) for s in stored]

    assert received == datas


def test_object_streams_hand_out_segments_that_later_reads_do_not_overwrite(clinic):
    datas = [os.urandom(3 * SEGMENT) for _ in range(3)]
    stored = [put(clinic, data) for data in datas]
    streams = objects.ObjectStreams(clinic=clinic, key_ids={s.key_id for s in stored})
    kept: list[bytes] = []

    for s in stored:
        source = streams.open(s.key)
        kept += list(iter(source.read_chunk, b""))
        source.close()

    assert b"".join(kept) == b"".join(datas)


def test_object_streams_detect_a_flipped_byte_in_a_later_segment(clinic):
    data = os.urandom(3 * SEGMENT)
    stored = put(clinic, data)
    flip(primary_path(stored.key), header_size(stored) + 2 * SEALED + 1)
    streams = objects.ObjectStreams(clinic=clinic, key_ids={stored.key_id})

    with pytest.raises(ObjectCorrupt):
        stream_all(streams, stored.key)


def test_object_streams_continue_from_the_replica_mid_stream(clinic, failures):
    datas = [os.urandom(4 * SEGMENT) for _ in range(2)]
    stored = [put(clinic, data) for data in datas]
    for s in stored:
        replicate(s.key)
    flip(primary_path(stored[0].key), header_size(stored[0]) + 3 * SEALED + 7)
    streams = objects.ObjectStreams(clinic=clinic, key_ids={s.key_id for s in stored})

    received = [stream_all(streams, s.key) for s in stored]

    assert received == datas
    assert failures == [(clinic, stored[0].key)]


def test_object_streams_refuse_an_object_naming_another_clinics_key(clinic, other_clinic):
    theirs = put(other_clinic, b"their data")
    ours = put(clinic, b"our data")
    # Their object copied under our name: its header names their key, which we never looked up.
    target = primary_path(objects.object_key_for(clinic=clinic, object_uuid=uuid.uuid4()))
    target.write_bytes(primary_path(theirs.key).read_bytes())
    key = "clinics/" + target.relative_to(stores.get_store("primary").root / "clinics").as_posix()
    streams = objects.ObjectStreams(clinic=clinic, key_ids={ours.key_id, theirs.key_id})

    with pytest.raises(ObjectCorrupt):
        stream_all(streams, key)

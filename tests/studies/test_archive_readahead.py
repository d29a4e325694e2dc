"""Decrypting ahead of the sender: exact bytes in order, clean failures, a helper that stops with the client."""

from __future__ import annotations

import functools
import threading
import time
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlparse

import pytest
from pydicom.uid import generate_uid

from studies.archive import objects, readahead
from studies.archive.errors import ObjectCorrupt
from tests.dicom_files import write_instance
from tests.factories import ingest_files, token_for
from tests.studies.dicomweb_support import multipart_parts

ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture
def stored(clinic, tmp_path):
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = [write_instance(tmp_path, study_uid=study_uid, series_uid=series_uid, instance_number=n) for n in (1, 2, 3)]
    return {"uid": study_uid, "paths": paths, "instances": ingest_files(clinic, paths)}


def _corrupt_everywhere(settings, key: str) -> None:
    """Flip one ciphertext byte of the object in every store, so no copy can be read."""
    for url in (settings.PRIMARY_STORE_URL, settings.REPLICA_STORE_URL):
        target = Path(urlparse(url).path) / key
        if target.exists():
            data = bytearray(target.read_bytes())
            data[len(data) // 2] ^= 0xFF
            target.write_bytes(bytes(data))


def _openers(clinic, instances):
    return [functools.partial(objects.object_stream_open, clinic=clinic, key=i.object_key) for i in instances]


def test_read_ahead_yields_every_object_exactly_and_in_order(clinic, tmp_path, settings):
    # Many small segments per object, a queue of one and batches of one segment: the helper waits on the
    # consumer at every segment.
    settings.ARCHIVE_SEGMENT_SIZE = 4096
    paths = [write_instance(tmp_path, study_uid=generate_uid(), series_uid=generate_uid()) for _ in range(4)]
    instances = ingest_files(clinic, paths)
    bodies = readahead.objects_read_ahead(_openers(clinic, instances), depth=1, batch_bytes=1)

    got = [list(body) for body in bodies]

    assert [b"".join(chunks) for chunks in got] == [path.read_bytes() for path in paths]
    assert all(len(chunks) > 3 for chunks in got)


def test_batches_spanning_several_objects_keep_each_object_whole_and_in_order(clinic, tmp_path, settings):
    settings.ARCHIVE_SEGMENT_SIZE = 4096
    paths = [write_instance(tmp_path, study_uid=generate_uid(), series_uid=generate_uid()) for _ in range(5)]
    instances = ingest_files(clinic, paths)
    # A batch of about three segments: batches end inside objects and hold the ends of others.
    bodies = readahead.objects_read_ahead(_openers(clinic, instances), depth=2, batch_bytes=3 * 4096)

    got = [b"".join(body) for body in bodies]

    assert got == [path.read_bytes() for path in paths]


def test_an_object_failing_after_others_in_its_batch_raises_after_their_bytes(clinic, stored, settings):
    _corrupt_everywhere(settings, stored["instances"][2].object_key)
    bodies = readahead.objects_read_ahead(_openers(clinic, stored["instances"]), batch_bytes=10**9)

    first, second = b"".join(next(bodies)), b"".join(next(bodies))
    third = next(bodies)

    assert [first, second] == [path.read_bytes() for path in stored["paths"][:2]]
    with pytest.raises(ObjectCorrupt):
        b"".join(third)


def test_an_object_failing_mid_study_raises_after_the_objects_before_it(clinic, stored, settings):
    _corrupt_everywhere(settings, stored["instances"][1].object_key)
    bodies = readahead.objects_read_ahead(_openers(clinic, stored["instances"]))

    first = b"".join(next(bodies))
    second = next(bodies)

    assert first == stored["paths"][0].read_bytes()
    with pytest.raises(ObjectCorrupt):
        b"".join(second)


def test_the_helper_stops_when_the_consumer_goes_away(clinic, stored):
    bodies = readahead.objects_read_ahead(_openers(clinic, stored["instances"] * 20), depth=1, batch_bytes=1)
    next(next(bodies))

    bodies.close()

    deadline = time.monotonic() + 5
    while any(t.name == "read-ahead" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "read-ahead" for t in threading.enumerate())


def test_items_read_ahead_keeps_order_and_hands_errors_over_in_place():
    def prepare(n: int) -> int:
        if n == 2:
            raise ValueError("two")
        return n * 10

    results = list(readahead.items_read_ahead(range(5), prepare))

    assert results[:2] == [0, 10] and results[3:] == [30, 40]
    assert isinstance(results[2], ValueError)


def test_wado_answer_cut_before_an_unreadable_instance_never_announces_its_part(client, clinic, stored, settings):
    _corrupt_everywhere(settings, stored["instances"][1].object_key)
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(clinic)}"
    response = client.get(f"/dicomweb/clinic-a/studies/{stored['uid']}", HTTP_ACCEPT=ANY_SYNTAX)
    assert response.status_code == HTTPStatus.OK  # the first object was readable: the answer started

    received = b""
    with pytest.raises(ObjectCorrupt):
        for chunk in response.streaming_content:
            received += chunk

    # The first part is whole; the second never started; the client sees a body short of Content-Length.
    assert multipart_parts(received, response["Content-Type"]) == [stored["paths"][0].read_bytes()]
    assert received.count(b"Content-Type: application/dicom") == 1
    assert len(received) < int(response["Content-Length"])


def test_wado_study_declares_its_exact_length(client, clinic, stored):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(clinic)}"
    response = client.get(f"/dicomweb/clinic-a/studies/{stored['uid']}", HTTP_ACCEPT=ANY_SYNTAX)

    body = b"".join(response.streaming_content)

    assert len(body) == int(response["Content-Length"])
    assert sorted(multipart_parts(body, response["Content-Type"])) == sorted(p.read_bytes() for p in stored["paths"])

"""The per-process cache of decrypted instances behind frame, rendered and bulk data requests."""

from __future__ import annotations

from http import HTTPStatus

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from studies.archive import objects, plaincache
from studies.archive.errors import ObjectMissing
from studies.browse import services
from studies.models import Study
from tests.dicom_files import write_instance
from tests.factories import ingest_files, token_for
from tests.studies.dicomweb_support import multipart_parts


@pytest.fixture(autouse=True)
def _empty_cache():
    from django.core.cache import cache

    cache.clear()
    plaincache.clear()
    yield
    plaincache.clear()


@pytest.fixture
def opens(monkeypatch):
    """Count the decryptions of whole objects (each ``object_open``)."""
    calls: list[str] = []
    original = objects.object_open

    def counting(**kwargs):
        calls.append(kwargs["key"])
        return original(**kwargs)

    monkeypatch.setattr(objects, "object_open", counting)
    return calls


def _study(clinic, tmp_path, *, sop_uid=None, study_uid=None, series_uid=None, count=1):
    study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
    paths = [
        write_instance(tmp_path / clinic.slug, study_uid=study_uid, series_uid=series_uid,
                       sop_uid=sop_uid if n == 1 else None, instance_number=n)
        for n in range(1, count + 1)
    ]
    return study_uid, series_uid, paths, ingest_files(clinic, paths)


def _frame_url(slug, study_uid, series_uid, sop_uid):
    return f"/dicomweb/{slug}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/1"


def _frame(client, clinic, url):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(clinic)}"
    return client.get(url)


def test_frames_of_one_instance_are_decrypted_once(client, clinic, tmp_path, opens):
    study_uid, series_uid, paths, [instance] = _study(clinic, tmp_path)
    url = _frame_url("clinic-a", study_uid, series_uid, instance.sop_instance_uid)

    answers = [_frame(client, clinic, url) for _ in range(3)]
    rendered = client.get(url.replace("/frames/1", "/rendered"))

    assert [a.status_code for a in answers] == [HTTPStatus.OK] * 3
    assert rendered.status_code == HTTPStatus.OK
    for answer in answers:
        [frame] = multipart_parts(answer.content, answer["Content-Type"])
        assert frame == dcmread(paths[0]).PixelData
    assert opens == [instance.object_key]


def test_another_clinic_is_never_served_a_cached_instance(client, clinic, other_clinic, tmp_path):
    # Both clinics hold an instance with the same UIDs but different pixels.
    study_uid, series_uid, sop_uid = generate_uid(), generate_uid(), generate_uid()
    _, _, ours, [our_instance] = _study(clinic, tmp_path, sop_uid=sop_uid, study_uid=study_uid, series_uid=series_uid)
    theirs_path = write_instance(tmp_path / "b", study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid)
    ds = dcmread(theirs_path)
    ds.PixelData = (np.frombuffer(ds.PixelData, dtype="<i2") ^ 0x55).astype("<i2").tobytes()
    ds.save_as(theirs_path)
    [their_instance] = ingest_files(other_clinic, [theirs_path])
    assert _frame(client, clinic, _frame_url("clinic-a", study_uid, series_uid, sop_uid)).status_code == 200

    theirs = _frame(client, other_clinic, _frame_url("clinic-b", study_uid, series_uid, sop_uid))

    [frame] = multipart_parts(theirs.content, theirs["Content-Type"])
    assert frame == ds.PixelData != dcmread(ours[0]).PixelData
    # Asking for the first clinic's object in the second clinic's name finds nothing, cached or not.
    assert plaincache.cached(clinic=clinic, key=our_instance.object_key) is not None
    with pytest.raises(ObjectMissing):
        objects.object_read_cached(clinic=other_clinic, key=our_instance.object_key)
    assert their_instance.object_key != our_instance.object_key


def test_a_trashed_instance_is_not_served_from_the_cache(client, clinic, tmp_path):
    study_uid, series_uid, _, [instance] = _study(clinic, tmp_path)
    url = _frame_url("clinic-a", study_uid, series_uid, instance.sop_instance_uid)
    assert _frame(client, clinic, url).status_code == HTTPStatus.OK
    assert plaincache.held_bytes() > 0

    # Trashed by another process: nothing here told the cache.
    Study.objects.filter(study_instance_uid=study_uid).update(deleted_at="2024-01-01T00:00:00Z")

    assert _frame(client, clinic, url).status_code == HTTPStatus.NOT_FOUND
    assert client.get(url.replace("/frames/1", "/rendered")).status_code == HTTPStatus.NOT_FOUND


def test_purging_a_study_forgets_its_decrypted_instances(client, clinic, tmp_path):
    study_uid, series_uid, _, [instance] = _study(clinic, tmp_path)
    assert _frame(client, clinic, _frame_url("clinic-a", study_uid, series_uid, instance.sop_instance_uid)).status_code == 200
    study = Study.objects.get(study_instance_uid=study_uid)
    services.study_delete(clinic=clinic, study=study)

    services.study_purge(clinic=clinic, study_id=study.pk)

    assert plaincache.cached(clinic=clinic, key=instance.object_key) is None
    assert plaincache.held_bytes() == 0


def test_the_cache_stays_within_its_budget(client, clinic, tmp_path, settings, opens):
    study_uid, series_uid, _, instances = _study(clinic, tmp_path, count=5)
    size = instances[0].size_bytes
    settings.DECRYPTED_CACHE_BYTES = size * 4 + size // 2  # room for four of the five, a quarter each at most

    for instance in instances:
        assert _frame(client, clinic, _frame_url("clinic-a", study_uid, series_uid, instance.sop_instance_uid)).status_code == 200

    assert plaincache.held_bytes() <= settings.DECRYPTED_CACHE_BYTES
    assert plaincache.cached(clinic=clinic, key=instances[0].object_key) is None  # least recently used: out
    assert plaincache.cached(clinic=clinic, key=instances[-1].object_key) is not None

    settings.DECRYPTED_CACHE_BYTES = size * 2  # now each is too large to keep
    plaincache.clear()
    for _ in range(2):
        _frame(client, clinic, _frame_url("clinic-a", study_uid, series_uid, instances[0].sop_instance_uid))
    assert plaincache.held_bytes() == 0
    assert opens.count(instances[0].object_key) == 3


ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _remove_everywhere(settings, key):
    from pathlib import Path
    from urllib.parse import urlparse

    for url in (settings.PRIMARY_STORE_URL, settings.REPLICA_STORE_URL):
        (Path(urlparse(url).path) / key).unlink(missing_ok=True)


def test_a_study_retrieve_sends_an_instance_held_decrypted_without_reading_the_store(
    client, clinic, tmp_path, settings
):
    study_uid, series_uid, paths, instances = _study(clinic, tmp_path, count=2)
    viewed = _frame(client, clinic, _frame_url("clinic-a", study_uid, series_uid, instances[0].sop_instance_uid))
    assert viewed.status_code == HTTPStatus.OK
    # Gone from both stores: only this process's cache can still answer for it.
    _remove_everywhere(settings, instances[0].object_key)

    response = client.get(f"/dicomweb/clinic-a/studies/{study_uid}", HTTP_ACCEPT=ANY_SYNTAX)
    body = b"".join(response.streaming_content)

    assert response.status_code == HTTPStatus.OK
    assert len(body) == int(response["Content-Length"])
    assert sorted(multipart_parts(body, response["Content-Type"])) == sorted(p.read_bytes() for p in paths)


def test_a_trashed_study_is_not_retrieved_from_the_cache(client, clinic, tmp_path):
    study_uid, series_uid, _, [instance] = _study(clinic, tmp_path)
    assert _frame(client, clinic, _frame_url("clinic-a", study_uid, series_uid, instance.sop_instance_uid)).status_code == 200
    Study.objects.filter(study_instance_uid=study_uid).update(deleted_at="2024-01-01T00:00:00Z")

    response = client.get(f"/dicomweb/clinic-a/studies/{study_uid}", HTTP_ACCEPT=ANY_SYNTAX)

    assert response.status_code == HTTPStatus.NOT_FOUND

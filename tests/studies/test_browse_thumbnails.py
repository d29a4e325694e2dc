"""Series thumbnails: rendered by a task from the middle image, stored encrypted, served decrypted."""

from __future__ import annotations

import io
from http import HTTPStatus

import pytest
from PIL import Image

from studies.archive import stores
from studies.browse import tasks
from studies.browse.thumbnails import thumbnail_object_uuid
from studies.models import Series
from tests.dicom_files import write_series
from tests.factories import ingest_files


def thumbnail_url(series):
    return f"/c/{series.clinic.slug}/studies/{series.study.uuid}/series/{series.uuid}/thumbnail.png"


def render(series):
    tasks.series_thumbnail_render(clinic_id=series.clinic_id, series_id=series.pk)
    return Series.objects.get(pk=series.pk)


@pytest.fixture
def ct_series(clinic, tmp_path):
    return ingest_files(clinic=clinic, paths=write_series(tmp_path / "ct", count=3))[0].series


def test_task_renders_a_png_from_the_middle_instance(client, clinician, ct_series):
    series = render(ct_series)

    middle = series.instances.get(instance_number=2)
    assert series.thumbnail_key.endswith(str(thumbnail_object_uuid(series=series, instance_uuid=middle.uuid)))
    raw = stores.get_store("primary").open(series.thumbnail_key).read()
    assert b"PNG" not in raw[:16]  # stored encrypted
    client.force_login(clinician)
    response = client.get(thumbnail_url(series))
    assert response.status_code == HTTPStatus.OK and response["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and max(image.size) <= 256
    pixels = list(image.getdata())
    assert min(pixels) < 50 and max(pixels) > 200  # windowed to use the grey range


def test_render_twice_keeps_the_same_thumbnail(ct_series):
    first = render(ct_series).thumbnail_key

    second = render(ct_series).thumbnail_key

    assert first == second
    assert stores.get_store("primary").exists(first)


def test_series_that_grew_gets_a_new_thumbnail_and_the_old_one_is_deleted(clinic, tmp_path, ct_series):
    old_key = render(ct_series).thumbnail_key
    more = write_series(tmp_path / "more", count=5, study_uid=ct_series.study.study_instance_uid,
                        series_uid=ct_series.series_instance_uid)[3:]
    ingest_files(clinic=clinic, paths=more)  # instance numbers 4 and 5: the middle is now number 3

    new_key = render(ct_series).thumbnail_key

    assert new_key != old_key
    assert not stores.get_store("primary").exists(old_key)


@pytest.mark.parametrize("sample", [
    "SC_rgb_jpeg_dcmtk.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm",
    "examples_palette.dcm", "examples_ybr_color.dcm", "MR_small_bigendian.dcm",
])
def test_compressed_colour_and_multiframe_samples_get_thumbnails(clinic, tmp_path, sample):
    series = ingest_files(clinic=clinic, paths=write_series(tmp_path / "x", count=1, source=sample))[0].series

    assert render(series).thumbnail_key


def test_series_without_images_gets_no_thumbnail(clinic, tmp_path):
    series = ingest_files(clinic=clinic, paths=write_series(tmp_path / "sr", count=1, source="test-SR.dcm"))[0].series

    assert render(series).thumbnail_key == ""


def test_thumbnail_view_is_404_for_outsider_and_before_rendering(client, clinician, outsider, ct_series):
    client.force_login(clinician)
    assert client.get(thumbnail_url(ct_series)).status_code == HTTPStatus.NOT_FOUND
    series = render(ct_series)
    client.force_login(outsider)

    assert client.get(thumbnail_url(series)).status_code == HTTPStatus.NOT_FOUND


def test_thumbnail_view_is_403_for_uploader(client, uploader, ct_series):
    series = render(ct_series)
    client.force_login(uploader)

    assert client.get(thumbnail_url(series)).status_code == HTTPStatus.FORBIDDEN


def test_study_page_shows_the_thumbnail(client, clinician, ct_series):
    series = render(ct_series)
    client.force_login(clinician)

    response = client.get(f"/c/{series.clinic.slug}/studies/{series.study.uuid}/")

    assert thumbnail_url(series) in response.content.decode()

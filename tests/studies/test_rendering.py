"""One renderer (pydicom's VOI functions) for rendered frames and thumbnails, and the bounds of a render."""

from __future__ import annotations

import io
from http import HTTPStatus

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from studies.browse import thumbnails
from studies.dicomweb import rendering
from studies.sharing import services as sharing_services
from tests.dicom_files import PYDICOM_SAMPLES as SAMPLES
from tests.dicom_files import write_instance
from tests.factories import ingest_files, token_for

BASE = "/dicomweb/clinic-a/"


def ramp_dataset(**header: object) -> Dataset:
    """A 64 x 64 grey ramp from -1000 to 1000 (after the modality LUT), stored as unsigned 16-bit."""
    ds = pydicom.dcmread(SAMPLES / "CT_small.dcm")
    values = np.tile(np.linspace(0, 2000, 64), (64, 1)).astype(np.uint16)
    ds.Rows, ds.Columns = values.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1000
    ds.PixelData = values.tobytes()
    for name in ("WindowCenter", "WindowWidth"):
        if name in ds:
            del ds[name]
    for name, value in header.items():
        setattr(ds, name, value)
    return ds


def grey(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L")).astype(int)


def test_header_window_maps_its_centre_to_mid_grey_and_clips_outside():
    ds = ramp_dataset(WindowCenter=0, WindowWidth=1000)

    image = grey(rendering.render(ds, frame=1, options=rendering.RenderOptions(media_type="image/png")))

    row = image[32]
    assert row[0] == 0 and row[-1] == 255
    assert abs(row[32] - 128) <= 4
    assert (row[:16] == 0).all() and (row[-16:] == 255).all()


def test_sigmoid_window_never_reaches_black_or_white():
    ds = ramp_dataset(WindowCenter=0, WindowWidth=1000, VOILUTFunction="SIGMOID")

    row = grey(rendering.render(ds, frame=1, options=rendering.RenderOptions(media_type="image/png")))[32]

    assert 0 < row.min() < 20 and 235 < row.max() < 255


def test_voi_lut_sequence_is_applied_when_there_is_no_window():
    ds = ramp_dataset(RescaleIntercept=0)
    item = Dataset()
    # An inverting 12-bit LUT over the values 0..2047 (the ramp runs from 0 to 2000).
    item.LUTDescriptor = [2048, 0, 12]
    item.LUTData = [4095 - i * 2 for i in range(2048)]
    ds.VOILUTSequence = [item]

    row = grey(rendering.render(ds, frame=1, options=rendering.RenderOptions(media_type="image/png")))[32]

    assert row[0] == 255 and abs(row[-1] - round((4095 - 4000) * 255 / 4095)) <= 1


def test_thumbnail_and_rendered_frame_are_drawn_alike(tmp_path):
    ds = ramp_dataset(WindowCenter=200, WindowWidth=600)
    path = tmp_path / "ramp.dcm"
    ds.save_as(path)
    options = rendering.RenderOptions(media_type="image/png", viewport=(64, 64))

    rendered = grey(rendering.render(ds, frame=1, options=options))
    with path.open("rb") as source:
        thumbnail = grey(thumbnails.thumbnail_render_png(source))

    assert thumbnail.shape[0] >= 64
    small = np.asarray(Image.fromarray(thumbnail.astype(np.uint8)).resize((64, 64))).astype(int)
    assert np.abs(small - rendered).mean() < 4


def test_a_frame_past_the_memory_bound_is_refused_with_413_and_no_thumbnail_is_made(settings, tmp_path):
    settings.DICOMWEB_RENDER_MAX_SOURCE_PIXELS = 64 * 63
    ds = ramp_dataset()
    path = tmp_path / "big.dcm"
    ds.save_as(path)

    with pytest.raises(rendering.RenderTooLarge) as refused:
        rendering.render(ds, frame=1, options=rendering.RenderOptions())
    assert refused.value.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE


@pytest.fixture
def stored(clinic, tmp_path):
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = [write_instance(tmp_path, study_uid=study_uid, series_uid=series_uid, instance_number=n) for n in (1, 2)]
    instances = ingest_files(clinic, paths)
    instance = instances[0]
    url = f"studies/{study_uid}/series/{series_uid}/instances/{instance.sop_instance_uid}"
    return {"study": instance.series.study, "url": url}


@pytest.fixture
def api(client, clinic):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(clinic)}"
    return client


def test_more_frames_than_the_bound_are_refused_with_400(api, stored, settings):
    frames = ",".join(["1"] * (settings.DICOMWEB_RENDER_MAX_FRAMES + 1))

    response = api.get(f"{BASE}{stored['url']}/frames/{frames}/rendered")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert f"at most {settings.DICOMWEB_RENDER_MAX_FRAMES}" in response.json()["message"]


def test_frames_times_viewport_past_the_bound_are_refused_with_413(api, stored):
    response = api.get(f"{BASE}{stored['url']}/frames/1,1,1/rendered", {"viewport": "4096,4096"})

    assert response.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE


def test_a_viewport_past_4096_is_a_bad_request(api, stored):
    response = api.get(f"{BASE}{stored['url']}/rendered", {"viewport": "8192,8192"})

    assert response.status_code == HTTPStatus.BAD_REQUEST


def test_series_rendered_past_the_bound_is_refused(api, stored, settings):
    settings.DICOMWEB_RENDER_MAX_FRAMES = 1
    series_url = stored["url"].split("/instances/")[0]

    response = api.get(f"{BASE}{series_url}/rendered")

    assert response.status_code == HTTPStatus.BAD_REQUEST


def test_share_link_rendering_is_bounded_too(client, clinic, stored, settings):
    created = sharing_services.share_create(clinic=clinic, studies=[stored["study"]], created_by=None)
    frames = ",".join(["1"] * (settings.DICOMWEB_RENDER_MAX_FRAMES + 1))

    too_many = client.get(f"/s/{created.token}/dicomweb/{stored['url']}/frames/{frames}/rendered")
    one = client.get(f"/s/{created.token}/dicomweb/{stored['url']}/frames/1/rendered")

    assert too_many.status_code == HTTPStatus.BAD_REQUEST
    assert one.status_code == HTTPStatus.OK


def jpeg_baseline_dataset(size: int) -> Dataset:
    """A grey JPEG baseline image of ``size`` x ``size``, dark on the left half and bright on the right."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    values = np.zeros((size, size), dtype=np.uint8)
    values[:, size // 2 :] = 200
    stream = io.BytesIO()
    Image.fromarray(values, mode="L").save(stream, format="JPEG", quality=95)
    ds = ramp_dataset(RescaleIntercept=0, WindowCenter=100, WindowWidth=200)
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([stream.getvalue()])
    ds["PixelData"].VR = "OB"
    return ds


def test_a_large_jpeg_is_decoded_at_reduced_resolution_within_the_memory_bound(settings):
    settings.DICOMWEB_RENDER_MAX_SOURCE_PIXELS = 512 * 512
    ds = jpeg_baseline_dataset(1024)

    small = grey(
        rendering.render(ds, frame=1, options=rendering.RenderOptions(media_type="image/png", viewport=(128, 128)))
    )

    assert small.shape == (128, 128)
    assert small[:, :50].mean() < 10 and small[:, -50:].mean() > 245
    with pytest.raises(rendering.RenderTooLarge):
        rendering.render(ds, frame=1, options=rendering.RenderOptions(viewport=(1024, 1024)))

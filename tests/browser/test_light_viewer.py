"""In Chromium: the light viewer shows what it can (cine loop, zoom at the displayed resolution) and says
plainly when a series holds no images."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from studies.ingest import instance_ingest
from tests.dicom_files import PYDICOM_SAMPLES as SAMPLES

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FRAMES = 6


def store_cine_study_with_a_plan(clinic, tmp_path: Path):
    """A 6-frame CT (each frame brighter) and an RT Plan, in one study of one patient."""
    ct = pydicom.dcmread(SAMPLES / "CT_small.dcm")
    study_uid = generate_uid()
    ct.StudyInstanceUID, ct.SeriesInstanceUID = study_uid, generate_uid()
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    base = ct.pixel_array
    frames = np.stack([np.clip(base.astype(np.int32) + 40 * n, 0, 4000).astype(base.dtype) for n in range(FRAMES)])
    ct.NumberOfFrames = FRAMES
    ct.PixelData = frames.tobytes()
    plan = pydicom.dcmread(SAMPLES / "rtplan.dcm")
    plan.StudyInstanceUID, plan.SeriesInstanceUID = study_uid, generate_uid()
    plan.SOPInstanceUID = plan.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    plan.PatientName, plan.PatientID = ct.PatientName, ct.PatientID
    plan.PatientBirthDate, plan.PatientSex = ct.get("PatientBirthDate", ""), ct.get("PatientSex", "")
    study = None
    for name, ds in (("ct.dcm", ct), ("plan.dcm", plan)):
        path = tmp_path / name
        ds.save_as(path)
        study = instance_ingest(clinic=clinic, source_path=str(path)).instance.series.study
    return study


def test_cine_loops_zoom_renders_larger_and_a_plan_says_it_has_no_images(page, sign_in, clinic, clinician, tmp_path):
    study = store_cine_study_with_a_plan(clinic, tmp_path)
    sign_in(clinician)
    bad: list[str] = []
    page.on("response", lambda response: bad.append(response.url) if response.status >= 400 else None)

    page.goto(f"/c/{clinic.slug}/viewer/{study.uuid}/")
    page.wait_for_selector("#image[data-slice='1']")
    # Drawn, not just asked for: the page's CSP lets the blob: image through.
    page.wait_for_timeout(300)
    drawn = page.evaluate("() => document.getElementById('image').naturalWidth")
    page.click("#cine")
    page.wait_for_selector(f"#image[data-slice='{FRAMES}']")
    page.wait_for_selector("#image[data-slice='1']")
    # Drawn, not just asked for: the page's CSP lets the blob: image through.
    page.wait_for_timeout(300)
    drawn = page.evaluate("() => document.getElementById('image').naturalWidth")
    page.click("#cine")
    before = page.locator("#image").get_attribute("data-src")
    size = page.locator("#viewport").bounding_box()
    page.locator("#viewport").hover()
    page.keyboard.down("Control")
    for _ in range(5):
        page.mouse.wheel(0, -200)
    page.keyboard.up("Control")
    page.wait_for_timeout(600)
    after = viewport_of(page)
    page.click(".series-list button:has-text('RTPLAN')")
    message = page.locator("#status")

    assert drawn > 0
    assert "viewport=" not in before
    assert after[0] > size["width"] and after[1] > size["height"]
    assert "holds no images" in message.inner_text()
    assert not bad


def viewport_of(page) -> tuple[int, int]:
    source = page.locator("#image").get_attribute("data-src")
    width, height = re.search(r"viewport=(\d+),(\d+)", source).groups()
    return int(width), int(height)

"""In Chromium: the viewer (scroll, window/level), a PIN-protected share link end to end, and billing."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from studies.ingest import instance_ingest
from studies.models import Study
from studies.sharing.models import Share

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

from tests.dicom_files import PYDICOM_SAMPLES as SAMPLES  # noqa: E402


def store_series(clinic, tmp_path: Path, slices: int = 12) -> tuple[Study, list[bytes]]:
    """Store a CT series of ``slices`` images made from pydicom's CT sample, each slice a bit brighter."""
    template = pydicom.dcmread(SAMPLES / "CT_small.dcm")
    study_uid, series_uid = generate_uid(), generate_uid()
    originals = []
    for number in range(1, slices + 1):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        pixels = ds.pixel_array.copy()
        pixels[: number * 4, :] = pixels.max()
        ds.PixelData = pixels.tobytes()
        path = tmp_path / f"slice-{number}.dcm"
        ds.save_as(path)
        originals.append(path.read_bytes())
        result = instance_ingest(clinic=clinic, source_path=str(path))
    return result.instance.series.study, originals


def test_viewer_scrolls_and_window_level_changes_the_image(page, sign_in, clinic, clinician, tmp_path):
    study, _ = store_series(clinic, tmp_path)
    sign_in(clinician)

    page.goto(f"/c/{clinic.slug}/viewer/{study.uuid}/")
    page.wait_for_selector("#image[data-slice='1']")
    page.locator("#viewport").hover()
    page.locator("#viewport").focus()
    page.mouse.wheel(0, 120)
    page.wait_for_selector("#image[data-slice='2']")
    page.keyboard.press("ArrowDown")
    page.wait_for_selector("#image[data-slice='3']")
    before = page.locator("#image").screenshot()
    box = page.locator("#viewport").bounding_box()
    page.mouse.move(box["x"] + 50, box["y"] + 50)
    page.mouse.down()
    page.mouse.move(box["x"] + 250, box["y"] + 150, steps=8)
    page.mouse.up()
    # A selector, not wait_for_function: the Content-Security-Policy forbids the eval that needs.
    page.wait_for_selector("#image[data-src*='window=']")
    page.wait_for_timeout(300)
    after = page.locator("#image").screenshot()

    assert before != after
    assert "W " in page.locator("#overlay-window").inner_text()
    assert page.locator("#overlay-slice").inner_text().endswith("Im 3 / 12")


def test_share_link_with_pin_from_creation_to_revocation(page, browser, live_server, sign_in, clinic, clinician,
                                                         tmp_path):
    study, originals = store_series(clinic, tmp_path, slices=3)
    sign_in(clinician)
    page.goto(f"/c/{clinic.slug}/shares/new/?study={study.uuid}")
    page.fill("#id_pin", "8642")
    page.check("#id_allow_download")
    page.click("main button[type=submit]")
    url = page.locator("[data-testid=share-url]").inner_text().strip()

    recipient = browser.new_context(accept_downloads=True).new_page()
    recipient.goto(url)
    recipient.fill("#id_pin", "1111")
    recipient.click("main button[type=submit]")
    assert "Wrong PIN" in recipient.content()
    recipient.fill("#id_pin", "8642")
    recipient.click("main button[type=submit]")
    recipient.click('text="View"')
    recipient.wait_for_selector("#image[data-slice='1']")
    recipient.go_back()
    with recipient.expect_download() as download_info:
        recipient.click("text=Download")
    archive = zipfile.ZipFile(io.BytesIO(Path(download_info.value.path()).read_bytes()))
    assert sorted(archive.read(name) for name in archive.namelist()) == sorted(originals)

    share = Share.objects.get()
    page.goto(f"/c/{clinic.slug}/shares/{share.uuid}/")
    page.once("dialog", lambda dialog: dialog.accept())  # "Revoke this link?"
    page.click("text=Revoke now")
    recipient.reload()
    assert "This link is not available" in recipient.content()
    recipient.context.close()


def test_billing_admin_upgrades_in_test_mode(page, sign_in, clinic, billing_admin):
    sign_in(billing_admin)

    page.goto(f"/c/{clinic.slug}/billing/")
    assert page.locator("[data-testid=test-mode]").is_visible()
    page.click("[data-testid=choose-professional]")

    assert page.locator("[data-testid=current-plan]").inner_text() == "Professional"
    assert "Test mode" in page.content()

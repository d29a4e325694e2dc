"""End to end in Chromium: upload a folder, find the study, open it, download the ZIP, compare bytes."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from tests.dicom_files import write_series

pytestmark = pytest.mark.browser


def test_uploaded_folder_is_found_opened_and_downloaded_byte_for_byte(page, sign_in, clinician, clinic, tmp_path):
    folder = tmp_path / "CD"
    ct = write_series(folder / "SERIES1", count=3, patient_name="FLOW^FIONA", patient_id="FL-7", accession="ACC-77")
    study_uid = __import__("pydicom").dcmread(ct[0]).StudyInstanceUID
    mr = write_series(folder / "SERIES2", count=2, source="MR_small.dcm", study_uid=study_uid, series_number=2,
                      patient_name="FLOW^FIONA", patient_id="FL-7", accession="ACC-77")
    originals = {hashlib.sha256(p.read_bytes()).hexdigest() for p in ct + mr}
    sign_in(clinician)

    page.goto(f"/c/{clinic.slug}/upload/")
    page.set_input_files("#folder-input", str(folder))
    page.wait_for_selector("#summary:not([hidden])")
    assert page.text_content("#count-stored") == "5"

    page.goto(f"/c/{clinic.slug}/studies/")
    page.fill("#id_patient_name", "fiona")
    page.click("form[role=search] button[type=submit]")
    page.wait_for_selector("#studies-table")
    rows = page.locator("#studies-table tbody tr")
    assert rows.count() == 1
    assert "ACC-77" in rows.first.text_content()
    rows.first.locator("a").first.click()
    page.wait_for_selector("#download-study")
    assert "FLOW, FIONA" in page.text_content("h1")
    assert page.locator(".card.series").count() == 2

    with page.expect_download() as download_info:
        page.click("#download-study")
    archive_path = tmp_path / "download.zip"
    download_info.value.save_as(archive_path)

    with zipfile.ZipFile(archive_path) as archive:
        members = [name for name in archive.namelist() if not name.endswith("/")]
        assert {hashlib.sha256(archive.read(name)).hexdigest() for name in members} == originals

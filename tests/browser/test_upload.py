"""Upload page in a real browser: a folder by picker, files by drag and drop, progress, summary, resume."""

from __future__ import annotations

import base64
import zipfile

import pytest

from studies.models import Instance, Study
from tests.dicom_files import sample_path, write_ct
from tests.studies.test_ingest_worker import redis_worker  # noqa: F401 - a real Celery worker fixture

pytestmark = pytest.mark.browser


@pytest.fixture
def cd_folder(tmp_path):
    """A CD copy: DICOMDIR, a readme and three images of one study in nested folders."""
    folder = tmp_path / "CD"
    (folder / "IMAGES" / "S1").mkdir(parents=True)
    (folder / "DICOMDIR").write_bytes(sample_path("dicomdirtests/DICOMDIR").read_bytes())
    (folder / "README.TXT").write_text("Open the viewer to see the images.")
    study_uid = "1.2.826.0.1.3680043.8.498.77"
    for i in range(3):
        write_ct(folder / "IMAGES" / "S1" / f"IM{i}", study_uid=study_uid, instance_number=i, rows=128, columns=128)
    return folder


def _wait_done(page) -> None:
    page.wait_for_selector("#upload[data-state=done]")
    page.wait_for_selector("#summary:not([hidden])")


def test_folder_picked_is_uploaded_with_progress_and_summary(page, sign_in, uploader, clinic, cd_folder):
    sign_in(uploader)
    page.goto(f"/c/{clinic.slug}/upload/")

    page.set_input_files("#folder-input", str(cd_folder))
    _wait_done(page)

    assert page.text_content("#count-stored") == "3"
    assert page.text_content("#count-skipped") == "2"  # DICOMDIR and README.TXT, as inside a ZIP
    assert page.text_content("#count-rejected") == "0"
    assert page.get_attribute("#overall-bar", "style").replace(" ", "") == "width:100%;"
    assert "5 of 5 files" in page.text_content("#overall-numbers")
    readme_row = page.locator("#file-table tr", has_text="README.TXT")
    assert "Not a DICOM file" in readme_row.text_content()
    assert page.locator("#file-table tr[data-outcome=stored]").count() == 3
    assert Instance.objects.for_clinic(clinic).count() == 3
    assert Study.objects.for_clinic(clinic).get().number_of_instances == 3


def test_files_chosen_before_the_page_script_has_loaded_are_still_uploaded(
    page, sign_in, uploader, clinic, tmp_path
):
    # On a slow connection a reader can pick files before upload.js has run: no change event reaches it.
    path = write_ct(tmp_path / "early.dcm", instance_number=1)
    held = []
    page.route("**/studies/upload*.js", lambda route: held.append(route))
    sign_in(uploader)
    page.goto(f"/c/{clinic.slug}/upload/", wait_until="commit")
    page.wait_for_selector("#file-input", state="attached")
    page.set_input_files("#file-input", str(path))
    for _ in range(200):  # the held request reaches the route handler while Playwright waits
        if held:
            break
        page.wait_for_timeout(50)
    held[0].continue_()
    _wait_done(page)

    assert page.text_content("#count-stored") == "1"
    assert Instance.objects.for_clinic(clinic).count() == 1


def test_files_dropped_on_the_page_are_uploaded(page, sign_in, uploader, clinic, tmp_path):
    files = [write_ct(tmp_path / f"drop{i}.dcm", instance_number=i) for i in range(2)]
    payload = [{"name": f.name, "data": base64.b64encode(f.read_bytes()).decode()} for f in files]
    sign_in(uploader)
    page.goto(f"/c/{clinic.slug}/upload/")

    page.evaluate(
        """(files) => {
            const transfer = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], f.name, {type: "application/dicom"}));
            }
            const zone = document.getElementById("drop-zone");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        payload,
    )
    _wait_done(page)

    assert page.text_content("#count-stored") == "2"
    assert Instance.objects.for_clinic(clinic).count() == 2


def test_leaving_and_coming_back_resumes_without_sending_done_files_again(page, sign_in, uploader, clinic, cd_folder):
    sign_in(uploader)
    page.on("dialog", lambda dialog: dialog.accept())  # "leave the page?" while a file is still sending
    page.goto(f"/c/{clinic.slug}/upload/")
    # IM2 never gets an answer: the page is left in the middle of the upload.
    page.route("**/upload/files/", lambda route: None if b"IM2" in (route.request.post_data_buffer or b"") else route.continue_())
    page.set_input_files("#folder-input", str(cd_folder))
    page.locator("#file-table tr.outcome-stored, #file-table tr.outcome-skipped").nth(3).wait_for()
    page.goto(f"/c/{clinic.slug}/upload/")
    page.unroute("**/upload/files/")
    sent = []
    page.on("request", lambda request: sent.append(request.url) if request.method == "POST" else None)

    assert "4 file(s) of it were already sent" in page.text_content("#resume-note")
    page.set_input_files("#folder-input", str(cd_folder))
    _wait_done(page)

    assert len(sent) == 1
    assert page.text_content("#count-stored") == "1"
    assert page.text_content("#count-already_present") == "2"
    assert page.locator("#file-table tr", has_text="IM0").text_content().endswith("Already present: Sent earlier.")
    assert Instance.objects.for_clinic(clinic).count() == 3


def test_a_finished_upload_is_not_offered_for_resuming(page, sign_in, uploader, clinic, cd_folder):
    sign_in(uploader)
    page.goto(f"/c/{clinic.slug}/upload/")
    page.set_input_files("#folder-input", str(cd_folder))
    _wait_done(page)

    page.goto(f"/c/{clinic.slug}/upload/")

    assert not page.is_visible("#resume-note")


def test_re_adding_the_same_files_says_already_present_not_stored(page, sign_in, uploader, clinic, cd_folder):
    sign_in(uploader)
    page.goto(f"/c/{clinic.slug}/upload/")
    page.set_input_files("#folder-input", str(cd_folder))
    _wait_done(page)

    page.set_input_files("#folder-input", str(cd_folder))
    page.wait_for_selector("#file-table tr[data-outcome=already_present]")
    _wait_done(page)

    assert page.text_content("#count-stored") == "0"
    assert page.text_content("#count-already_present") == "3"
    assert page.locator("#file-table tbody tr").count() == 5
    assert Instance.objects.for_clinic(clinic).count() == 3


def test_retry_button_is_not_shown_without_failures(page, sign_in, uploader, clinic, cd_folder):
    sign_in(uploader)
    page.goto(f"/c/{clinic.slug}/upload/")

    page.set_input_files("#folder-input", str(cd_folder))
    _wait_done(page)

    assert page.text_content("#count-failed") == "0"
    assert not page.is_visible("#retry-failed")


def test_failed_sends_are_retried_automatically_then_by_button(page, sign_in, uploader, clinic, tmp_path):
    path = write_ct(tmp_path / "flaky.dcm")
    sign_in(uploader)
    page.goto(f"/c/{clinic.slug}/upload/")
    page.evaluate("document.getElementById('upload').dataset.backoffMs = '50,50,50'")
    attempts = []

    def drop_connection(route):
        attempts.append(route.request.url)
        route.abort()

    page.route("**/upload/files/", drop_connection)
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#retry-failed:not([hidden])")
    failed_row = page.locator("#file-table tr[data-outcome=failed]").text_content()
    page.unroute("**/upload/files/")

    page.click("#retry-failed")
    _wait_done(page)

    assert len(attempts) == 4
    assert "connection failed" in failed_row
    assert page.text_content("#count-stored") == "1"
    assert page.text_content("#count-failed") == "0"
    assert Instance.objects.for_clinic(clinic).count() == 1


@pytest.mark.usefixtures("redis_worker")
def test_zip_archive_is_unpacked_by_the_worker_and_each_member_reported(page, sign_in, uploader, clinic, tmp_path):
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("CD/DICOMDIR", sample_path("dicomdirtests/DICOMDIR").read_bytes())
        zf.writestr("CD/readme.txt", "Open the viewer.")
        for i in range(2):
            zf.writestr(f"CD/IMG/{i}", write_ct(tmp_path / f"{i}.dcm", instance_number=i).read_bytes())
    sign_in(uploader)
    page.goto(f"/c/{clinic.slug}/upload/")

    page.set_input_files("#file-input", str(archive))
    _wait_done(page)

    assert page.text_content("#count-stored") == "2"
    assert page.text_content("#count-skipped") == "2"
    assert page.locator("#file-table tr", has_text="study.zip › CD/readme.txt").count() == 1
    assert Instance.objects.for_clinic(clinic).count() == 2

"""The walkthrough of issue 18 in Chromium, written as a clinic user notices each point."""

from __future__ import annotations

import re

import pytest
from django.core import mail

from studies.sharing import services as sharing
from studies.sharing.models import Share
from tenants.models import AuditEvent
from tests.dicom_files import write_ct
from tests.factories import make_study

pytestmark = pytest.mark.browser


def test_sizes_are_decimal_on_the_dashboard_and_study_page(page, sign_in, owner, clinic):
    study = make_study(clinic=clinic, patient_name="SIZE^SUE", size_bytes=52_600_000)
    sign_in(owner)

    page.goto(f"/c/{clinic.slug}/")
    dashboard = page.text_content("#usage-card")
    page.goto(f"/c/{clinic.slug}/studies/{study.uuid}/")

    assert "of 100.0 GB" in dashboard
    assert "52.6 MB" in page.text_content(".attributes")


def test_plan_buttons_read_as_plain_english(page, sign_in, owner, clinic):
    sign_in(owner)

    page.goto(f"/c/{clinic.slug}/billing/")
    labels = [text.strip() for text in page.locator("button[data-testid^=choose-]").all_text_contents()]

    assert labels
    assert not any(" to " in label and label.startswith("Choose") for label in labels)
    assert all(re.fullmatch(r"(Subscribe to|Upgrade to|Switch to) \w+", label) for label in labels), labels


def test_api_tokens_page_links_to_the_api_docs(page, sign_in, owner, clinic):
    sign_in(owner)
    page.goto(f"/c/{clinic.slug}/tokens/")

    page.click("#api-docs-link >> text=REST API (interactive documentation)")

    page.wait_for_selector(".swagger-ui .info")
    assert page.url.endswith("/api/v1/docs/")


def test_security_page_says_when_changes_apply(page, sign_in, owner, clinic):
    sign_in(owner)

    page.goto(f"/c/{clinic.slug}/security/")

    assert "from their next sign-in" in page.text_content("#policy-timing")
    assert "at once" in page.text_content("#policy-timing")


# --- sharing ------------------------------------------------------------------------------------------


def test_share_form_offers_the_patients_other_studies_and_shares_them_in_one_link(page, sign_in, clinician, clinic):
    first = make_study(clinic=clinic, patient_name="MULTI^MIA", patient_id="MM-1", study_description="Chest CT")
    second = make_study(clinic=clinic, patient_id="MM-1", study_description="Knee MR")
    make_study(clinic=clinic, patient_name="OTHER^OLAF", patient_id="OO-1", study_description="Not hers")
    sign_in(clinician)
    page.goto(f"/c/{clinic.slug}/studies/{first.uuid}/")

    page.get_by_role("link", name="Share", exact=True).click()
    boxes = page.locator("#share-studies input[type=checkbox]")
    assert boxes.count() == 2
    assert "Not hers" not in page.text_content("#share-studies")
    page.check(f"#share-studies input[value='{second.uuid}']")
    page.click("button:has-text('Create link')")

    page.wait_for_selector("[data-testid=share-url]")
    assert set(Share.objects.get().studies.values_list("pk", flat=True)) == {first.pk, second.pk}


def test_copy_link_button_copies_the_share_address(page, sign_in, clinician, clinic, live_server):
    study = make_study(clinic=clinic, patient_name="COPY^CORA")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    sign_in(clinician)
    page.goto(f"/c/{clinic.slug}/shares/new/?study={study.uuid}")
    page.click("button:has-text('Create link')")
    url = page.text_content("[data-testid=share-url]").strip()

    page.click("#copy-share-url")

    page.wait_for_selector("#copy-share-url:has-text('Copied')")
    assert page.evaluate("() => navigator.clipboard.readText()") == url


def test_revoking_a_link_asks_first_and_cancel_keeps_it(page, sign_in, clinician, clinic):
    study = make_study(clinic=clinic, patient_name="REV^ROB")
    share = sharing.share_create(clinic=clinic, studies=[study], created_by=clinician).share
    sign_in(clinician)
    page.goto(f"/c/{clinic.slug}/shares/{share.uuid}/")
    questions: list[str] = []

    def answer(dialog):
        questions.append(dialog.message)
        dialog.dismiss() if len(questions) == 1 else dialog.accept()

    page.on("dialog", answer)
    page.click("button:has-text('Revoke now')")
    page.wait_for_timeout(300)
    share.refresh_from_db()
    assert share.revoked_at is None
    page.click("button:has-text('Revoke now')")
    page.wait_for_selector("text=The link is revoked")

    assert "Revoke this link?" in questions[0]
    share.refresh_from_db()
    assert share.revoked_at is not None


def test_wrong_pin_says_how_many_tries_are_left(page, clinic, clinician):
    study = make_study(clinic=clinic, patient_name="PIN^PAT")
    created = sharing.share_create(clinic=clinic, studies=[study], created_by=clinician, pin="4321")

    page.goto(f"/s/{created.token}/")
    page.fill("#id_pin", "0000")
    page.click("button:has-text('Open')")
    first = page.text_content("p.banner.error")
    page.fill("#id_pin", "1111")
    page.click("button:has-text('Open')")

    assert "4 tries left" in first
    assert "3 tries left" in page.text_content("p.banner.error")
    assert "These images are protected by a PIN" in page.text_content("main")


def test_mistyped_patient_access_code_says_the_code_is_not_right(page, clinic, clinician):
    study = make_study(clinic=clinic, patient_name="CODE^CARL")
    created = sharing.share_create(clinic=clinic, studies=[study], created_by=clinician, pin="4321", kind="patient")
    wrong = ("B" if created.access_code[0] != "B" else "C") + created.access_code[1:]

    page.goto("/access/")
    page.fill("#id_code", wrong)
    page.click("button:has-text('Continue')")

    assert "This code is not right" in page.text_content("main")
    assert "incomplete" not in page.text_content("main")
    page.fill("#id_code", created.access_code)
    page.click("button:has-text('Continue')")
    page.wait_for_selector("#id_pin")


# --- upload links -----------------------------------------------------------------------------------------


def test_upload_link_pages_name_the_clinic_and_mail_once_without_html_escaping(page, clinic, owner, tmp_path):
    clinic.name = "St. Mary's hospital"
    clinic.save()
    created = sharing.upload_link_create(clinic=clinic, created_by=owner, pin="2468", note="Scans from Dr O'Brien")
    files = [write_ct(tmp_path / f"in{i}.dcm", instance_number=i) for i in range(3)]
    mail.outbox.clear()

    page.goto(f"/u/{created.token}/")
    assert "This upload link is protected by a PIN" in page.text_content("main")
    page.fill("#id_pin", "2468")
    # Until the upload page has loaded, its script may not listen yet: files chosen before would be lost.
    with page.expect_navigation():
        page.click("button:has-text('Open')")
    page.set_input_files("#file-input", [str(f) for f in files])
    page.wait_for_selector("#upload[data-state=done]")

    assert "Send studies to St. Mary's hospital" in page.text_content("h1")
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert "St. Mary's hospital" in message.subject + message.body
    assert "&#x27;" not in message.subject + message.body
    labels = set(AuditEvent.objects.for_clinic(clinic).filter(action="study.stored").values_list("actor_label", flat=True))
    assert labels == {f"upload_link:{created.link.uuid}"}


# --- anonymization ----------------------------------------------------------------------------------


def test_anonymization_job_page_updates_itself_while_the_job_runs(page, sign_in, clinician, clinic):
    from studies.anonymize import services as anonymize
    from studies.anonymize.models import AnonymizationJob, JobStatus

    project = anonymize.project_create(clinic=clinic, name="Trial", created_by=clinician)
    job = AnonymizationJob.objects.create(clinic=clinic, project=project, requested_by=clinician)
    sign_in(clinician)
    page.goto(f"/c/{clinic.slug}/anonymize/jobs/{job.uuid}/")
    assert page.text_content("#job-status") == "Queued"

    AnonymizationJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, total=10, done=4)

    page.wait_for_selector("#job-status:has-text('Running')")
    page.wait_for_selector("#job-done:has-text('4')")
    assert page.text_content("#job-total") == "10"
    AnonymizationJob.objects.filter(pk=job.pk).update(status=JobStatus.DONE, done=10)
    page.wait_for_selector("#job-status:has-text('Done')")
    assert page.text_content("#job-done") == "10"


# --- clinic export ------------------------------------------------------------------------------------


def test_owner_exports_the_whole_clinic_and_downloads_it(page, sign_in, owner, clinic, tmp_path):
    import zipfile

    from studies.exports import tasks as export_tasks
    from studies.exports.models import ClinicExport
    from tests.factories import ingest_files

    ingest_files(clinic=clinic, paths=[write_ct(tmp_path / f"e{i}.dcm", instance_number=i) for i in range(2)])
    sign_in(owner)
    page.goto(f"/c/{clinic.slug}/backup/")
    page.click("#export-card >> text=Export all studies")
    page.click("#export-request")
    page.wait_for_selector("#export-status")
    assert "e-mail with the download link" in page.text_content("main")

    job = ClinicExport.objects.get()
    export_tasks.clinic_export_build(clinic_id=clinic.pk, export_id=job.pk)
    page.wait_for_selector("#export-parts a")
    with page.expect_download() as download_info:
        page.click("#export-parts a")
    archive_path = tmp_path / "export.zip"
    download_info.value.save_as(archive_path)

    assert "Ready to download" in page.text_content("#export-status")
    assert any(f"/exports/{job.uuid}/" in m.body for m in mail.outbox)
    with zipfile.ZipFile(archive_path) as archive:
        assert "DICOMDIR" in archive.namelist()
        assert len(archive.namelist()) == 3

"""In Chromium: the diagnostic viewer (OHIF) served by the portal, for a clinic's reader and for share links."""

from __future__ import annotations

import time

import pydicom
import pytest
from pydicom.uid import generate_uid

from studies.ingest import instance_ingest
from tests.browser.test_viewer_sharing import store_series
from tests.dicom_files import PYDICOM_SAMPLES
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Mean grey level of the viewport canvas's centre: more than a black canvas can have.
CANVAS_MEAN_JS = """() => {
  const canvas = document.querySelector('.cornerstone-canvas, canvas');
  if (!canvas || !canvas.width) return -1;
  const probe = document.createElement('canvas');
  probe.width = 64; probe.height = 64;
  const context = probe.getContext('2d');
  context.drawImage(canvas, canvas.width / 4, canvas.height / 4, canvas.width / 2, canvas.height / 2, 0, 0, 64, 64);
  const data = context.getImageData(0, 0, 64, 64).data;
  let sum = 0;
  for (let i = 0; i < data.length; i += 4) sum += data[i] + data[i + 1] + data[i + 2];
  return sum / (data.length / 4) / 3;
}"""


def wait_for_image(page, timeout: float = 60) -> float:
    """Wait until the viewport shows an image; return its mean grey level (wait_for_function would need eval)."""
    page.wait_for_selector(".cornerstone-canvas", timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    while (mean := page.evaluate(CANVAS_MEAN_JS)) <= 10 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    return mean


def test_study_page_opens_the_study_in_ohif_and_a_length_is_measured(page, sign_in, clinic, clinician, tmp_path):
    study, _ = store_series(clinic, tmp_path, slices=5)
    sign_in(clinician)
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    failed: list[str] = []
    page.on(
        "response",
        lambda response: failed.append(f"{response.status} {response.url}") if response.status >= 400 else None,
    )

    page.goto(f"/c/{clinic.slug}/studies/{study.uuid}/")
    page.click("[data-testid=open-ohif]")
    mean = wait_for_image(page)

    page.click("[data-cy=MeasurementTools-split-button-primary]")
    box = page.locator(".cornerstone-canvas").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5, steps=10)
    page.mouse.up()
    page.click("button:has-text('Yes')")
    length = page.locator("[data-cy=viewport-pane] svg text", has_text=" mm").first
    length.wait_for()

    assert mean > 10, (errors, failed)
    assert float(length.text_content().split()[0]) > 5
    assert page.url.startswith(f"{page.url.split('/c/')[0]}/c/{clinic.slug}/viewer/ohif/viewer?StudyInstanceUIDs=")
    assert not failed, failed


def test_first_visit_shows_no_guided_tour(page, sign_in, clinic, clinician, tmp_path):
    """OHIF greets a new browser with a guided tour over the image; the portal's readers get the image alone."""
    study, _ = store_series(clinic, tmp_path, slices=2)
    sign_in(clinician)

    page.goto(f"/c/{clinic.slug}/viewer/{study.uuid}/ohif/")
    mean = wait_for_image(page)
    page.wait_for_timeout(1500)  # the tour would start with the viewport, before the image is drawn

    assert mean > 10
    assert page.locator(".shepherd-element").count() == 0
    assert page.locator("text=Skip all").count() == 0
    # OHIF records each tour it starts; none was started.
    assert page.evaluate("() => localStorage.getItem('shownTours')") is None


CACHED_URLS_JS = """async () => {
  const urls = [];
  for (const name of await caches.keys()) {
    for (const request of await (await caches.open(name)).keys()) urls.push(request.url);
  }
  return urls;
}"""
SERVICE_WORKER_ACTIVE_JS = """async (scope) => {
  const registration = await navigator.serviceWorker.getRegistration(scope);
  return !!(registration && registration.active && registration.active.state === 'activated');
}"""


def test_studies_list_installs_ohif_files_in_the_browser_and_never_patient_data(
    browser, live_server, clinic, clinician, tmp_path
):
    study, _ = store_series(clinic, tmp_path, slices=3)
    context = browser.new_context(base_url=live_server.url, service_workers="allow")
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.goto("/accounts/login/")
    page.fill("#id_username", clinician.email)
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_load_state()
    scope = f"/c/{clinic.slug}/viewer/ohif/"
    page.goto(f"/c/{clinic.slug}/studies/")
    deadline = time.monotonic() + 120
    while not page.evaluate(SERVICE_WORKER_ACTIVE_JS, scope) and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    from_worker: list[str] = []
    dicomweb: list[str] = []
    page.on("response", lambda r: from_worker.append(r.url) if r.from_service_worker else None)
    page.on("request", lambda r: dicomweb.append(r.url) if "/dicomweb/" in r.url else None)

    page.click("[data-testid=open-ohif]")
    mean = wait_for_image(page)
    controlled = page.evaluate("() => !!navigator.serviceWorker.controller")
    cached = page.evaluate(CACHED_URLS_JS)
    context.close()

    assert mean > 10
    assert controlled
    assert any("/app.bundle." in url for url in from_worker), from_worker[:5]
    assert dicomweb and not [url for url in from_worker if "/dicomweb/" in url]
    assert cached and all(url.startswith(live_server.url + scope) for url in cached)
    assert not [url for url in cached if "dicomweb" in url or "app-config" in url or "viewer?" in url]


def share_url(page, clinic, study, *, pin: str = "") -> str:
    page.goto(f"/c/{clinic.slug}/shares/new/?study={study.uuid}")
    if pin:
        page.fill("#id_pin", pin)
    page.click("main button[type=submit]")
    return page.locator("[data-testid=share-url]").inner_text().strip()


@pytest.mark.parametrize("pin", ["", "8642"], ids=["without-pin", "with-pin"])
def test_shared_study_opens_in_ohif_and_reads_only_the_link(page, browser, sign_in, clinic, clinician, tmp_path, pin):
    study, _ = store_series(clinic, tmp_path, slices=3)
    sign_in(clinician)
    url = share_url(page, clinic, study, pin=pin)
    link_path = "/" + url.split("/", 3)[3].rstrip("/") + "/"
    recipient = browser.new_context().new_page()
    recipient.goto(url)
    if pin:
        recipient.fill("#id_pin", pin)
        recipient.click("main button[type=submit]")
    recipient.wait_for_load_state("networkidle")
    requests: list[str] = []
    recipient.on("request", lambda request: requests.append(request.url))
    recipient.click("[data-testid=open-ohif]")
    mean = wait_for_image(recipient)
    content = recipient.content()
    recipient.context.close()

    assert mean > 10
    origin = url.split("/s/")[0]
    outside = [r for r in requests if r.startswith(origin) and not r[len(origin) :].startswith(link_path)]
    assert not outside, requests[:12]
    assert not [r for r in requests if not r.startswith((origin, "blob:", "data:"))]
    assert clinic.name not in content and clinic.slug not in content
    assert "/dicomweb/" + clinic.slug not in content


def test_ohif_study_list_shows_every_study_when_one_has_no_modality(page, sign_in, clinic, clinician, tmp_path):
    """Issue 13 item 8: a study whose files carry no Modality once made OHIF's whole list fail."""
    store_series(clinic, tmp_path, slices=1)
    bare = pydicom.dcmread(PYDICOM_SAMPLES / "CT_small.dcm")
    del bare.Modality
    bare.PatientName, bare.PatientID = "NOMODALITY^PAT", "NOMOD-1"
    bare.StudyInstanceUID, bare.SeriesInstanceUID = generate_uid(), generate_uid()
    bare.SOPInstanceUID = bare.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    bare.save_as(tmp_path / "bare.dcm")
    instance_ingest(clinic=clinic, source_path=str(tmp_path / "bare.dcm"))
    sign_in(clinician)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(f"/c/{clinic.slug}/viewer/ohif/")
    page.wait_for_selector("text=NOMODALITY", timeout=60_000)

    assert page.locator("text=CompressedSamples").count() >= 1
    assert not [e for e in errors if "length" in e], errors

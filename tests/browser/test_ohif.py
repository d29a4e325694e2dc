"""In Chromium: the diagnostic viewer (OHIF) served by the portal, for a clinic's reader and for share links."""

from __future__ import annotations

from pathlib import Path

import pytest

from studies.sharing.models import Share
from tests.browser.test_viewer_sharing import store_series

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


def wait_for_image(page) -> float:
    page.wait_for_selector(".cornerstone-canvas", timeout=60_000)
    page.wait_for_function(f"({CANVAS_MEAN_JS})() > 10", timeout=60_000)
    return page.evaluate(CANVAS_MEAN_JS)


def test_study_page_opens_the_study_in_ohif_and_a_length_is_measured(page, sign_in, clinic, clinician, tmp_path):
    study, _ = store_series(clinic, tmp_path, slices=5)
    sign_in(clinician)
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    failed: list[str] = []
    page.on("response", lambda response: failed.append(f"{response.status} {response.url}") if response.status >= 400 else None)

    page.goto(f"/c/{clinic.slug}/studies/{study.uuid}/")
    page.click("[data-testid=open-ohif]")
    mean = wait_for_image(page)

    page.screenshot(path="/tmp/ohif1.png")
    open("/tmp/ohif1.html", "w").write(page.content())
    assert mean > 10, (errors, failed)
    assert not failed, failed

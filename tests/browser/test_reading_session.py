"""In Chromium: reading is activity. A reader scrolling through cached slices stays signed in past the idle
limit; the warning comes only once they really stop."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from tests.browser.test_viewer_sharing import store_series

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

IDLE_SECONDS = 20
# The light viewer draws at once, so a shorter limit still leaves it all the time it needs.
LIGHT_IDLE_SECONDS = 12


def test_scrolling_in_the_light_viewer_keeps_the_reader_signed_in(page, sign_in, settings, clinic, clinician, tmp_path):
    settings.SESSION_IDLE_TIMEOUT = timedelta(seconds=LIGHT_IDLE_SECONDS)
    study, _ = store_series(clinic, tmp_path, slices=4)
    sign_in(clinician)
    page.goto(f"/c/{clinic.slug}/viewer/{study.uuid}/")
    page.wait_for_selector("#image[data-slice='1']")
    for step in (1, 2, 3, 4, 3, 2, 1):
        page.locator("#viewport").hover()
        page.mouse.wheel(0, 120 if step > 1 else -120)
    # From here on every slice is in the browser's cache: scrolling asks the server nothing.

    deadline = time.monotonic() + LIGHT_IDLE_SECONDS * 1.6
    direction = 120
    while time.monotonic() < deadline:
        page.mouse.wheel(0, direction)
        direction = -direction
        page.wait_for_timeout(700)
        assert page.locator("#session-warning").is_hidden()
    assert "/viewer/" in page.url
    page.goto(f"/c/{clinic.slug}/studies/")
    assert page.url.endswith(f"/c/{clinic.slug}/studies/")

    page.wait_for_selector("#session-warning", state="visible", timeout=LIGHT_IDLE_SECONDS * 1000)
    page.wait_for_url("**/accounts/login/**", timeout=LIGHT_IDLE_SECONDS * 1000)


def test_scrolling_in_ohif_keeps_the_reader_signed_in(page, sign_in, settings, clinic, clinician, tmp_path):
    from tests.browser.test_ohif import wait_for_image

    settings.SESSION_IDLE_TIMEOUT = timedelta(seconds=IDLE_SECONDS)
    study, _ = store_series(clinic, tmp_path, slices=4)
    sign_in(clinician)
    page.goto(f"/c/{clinic.slug}/viewer/{study.uuid}/ohif/")
    wait_for_image(page)
    canvas = page.locator(".cornerstone-canvas").first

    deadline = time.monotonic() + IDLE_SECONDS * 1.6
    direction = 120
    while time.monotonic() < deadline:
        canvas.hover()
        page.mouse.wheel(0, direction)
        direction = -direction
        page.wait_for_timeout(700)
        assert page.locator("#session-warning").is_hidden()
    assert "/viewer/ohif/" in page.url

    page.wait_for_selector("#session-warning", state="visible", timeout=IDLE_SECONDS * 1000)

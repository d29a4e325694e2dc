"""In Chromium at 390 x 844 (a phone): no page scrolls sideways, and the share page's buttons are on screen."""

from __future__ import annotations

import pytest

from studies.sharing import services as sharing_services
from tests.browser.test_viewer_sharing import store_series
from tests.factories import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}
# A mobile browser widens its layout viewport to fit wide content (and zooms out), so the page's width
# is compared with the phone's, not with window.innerWidth.
WIDTH_JS = "() => document.documentElement.scrollWidth"
CLINIC_PAGES = [
    "",
    "studies/",
    "studies/trash/",
    "upload/",
    "shares/",
    "shares/new/",
    "anonymize/",
    "members/",
    "tokens/",
    "security/",
    "audit/",
    "backup/",
    "dicom-nodes/",
    "billing/",
]


def assert_no_sideways_scroll(page, path: str) -> None:
    response = page.goto(path)
    width = page.evaluate(WIDTH_JS)
    assert response.ok, f"{path} answered {response.status}"
    assert width <= PHONE["width"], f"{path} is {width} px wide on a {PHONE['width']} px screen"


@pytest.fixture
def phone(browser, live_server):
    context = browser.new_context(base_url=live_server.url, viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    yield page
    context.close()


def sign_in_on(page, user) -> None:
    page.goto("/accounts/login/")
    page.fill("#id_username", user.email)
    page.fill("#id_password", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_load_state()


def test_clinic_pages_fit_a_phone(phone, clinic, owner, tmp_path):
    study, _ = store_series(clinic, tmp_path, slices=2)
    paths = ["/accounts/login/", "/access/"]
    paths += [f"/c/{clinic.slug}/{path}" for path in CLINIC_PAGES]
    paths += [f"/c/{clinic.slug}/studies/{study.uuid}/", f"/c/{clinic.slug}/viewer/{study.uuid}/", "/accounts/account/"]
    too_wide = []

    for path in paths:
        if path == f"/c/{clinic.slug}/":
            sign_in_on(phone, owner)
        response = phone.goto(path)
        assert response.ok, f"{path} answered {response.status}"
        if (width := phone.evaluate(WIDTH_JS)) > PHONE["width"]:
            too_wide.append((path, width))

    assert not too_wide


def test_share_page_fits_a_phone_with_its_buttons_on_screen(phone, clinic, tmp_path):
    study, _ = store_series(clinic, tmp_path, slices=2)
    created = sharing_services.share_create(clinic=clinic, studies=[study], created_by=None, allow_download=True)

    assert_no_sideways_scroll(phone, f"/s/{created.token}/")
    for name in ("Diagnostic viewer", "View", "Download"):
        button = phone.locator(f"a.button:text-is('{name}')")
        box = button.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], name
    assert_no_sideways_scroll(phone, f"/s/{created.token}/studies/{study.uuid}/")

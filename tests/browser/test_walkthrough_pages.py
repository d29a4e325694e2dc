"""What a new clinic notices on every page: no inline script blocked by the CSP, the product's own error
pages with a way back, a favicon, and the small page behaviours moved out of inline handlers."""

from __future__ import annotations

import pytest

from tests.factories import make_study

pytestmark = pytest.mark.browser


def _csp_violations(page) -> list[str]:
    violations: list[str] = []
    page.on(
        "console",
        lambda message: (
            violations.append(f"{page.url}: {message.text[:90]}") if "Content Security Policy" in message.text else None
        ),
    )
    return violations


def test_pages_load_under_the_strict_policy_without_violations(page, sign_in, owner, clinic):
    study = make_study(clinic=clinic, patient_name="CSP^CARL", study_description="Chest")
    violations = _csp_violations(page)
    sign_in(owner)

    for path in (
        "/",
        f"/c/{clinic.slug}/studies/",
        f"/c/{clinic.slug}/studies/{study.uuid}/",
        f"/c/{clinic.slug}/upload/",
        f"/c/{clinic.slug}/shares/",
        f"/c/{clinic.slug}/billing/",
        f"/c/{clinic.slug}/members/",
        f"/c/{clinic.slug}/tokens/",
        "/api/v1/docs/",
    ):
        response = page.goto(path)
        page.wait_for_load_state("networkidle")
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"], path

    assert violations == []
    assert page.locator(".swagger-ui").count() == 1


def test_delete_asks_for_confirmation_without_inline_script(page, sign_in, owner, clinic):
    study = make_study(clinic=clinic, patient_name="KEEP^KATE")
    sign_in(owner)
    page.goto(f"/c/{clinic.slug}/studies/{study.uuid}/")
    questions: list[str] = []

    def dismiss(dialog):
        questions.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    page.click("#delete-study")
    page.wait_for_timeout(300)

    assert questions and "Move this study to the trash?" in questions[0]
    study.refresh_from_db()
    assert study.deleted_at is None


def test_unknown_address_shows_the_product_page_with_a_way_back(page, sign_in, owner, clinic, settings):
    settings.DEBUG = True
    sign_in(owner)

    response = page.goto("/no/such/page/")

    assert response.status == 404
    assert "This page does not exist" in page.text_content("h1")
    assert "URL patterns" not in page.content()
    page.click("text=Back to your dashboard")
    page.wait_for_load_state()
    assert page.url.endswith(f"/c/{clinic.slug}/")


def test_forbidden_page_says_what_happened_and_offers_the_way_back(page, sign_in, clinic, uploader):
    sign_in(uploader)

    response = page.goto(f"/c/{clinic.slug}/members/")

    assert response.status == 403
    assert "You are not allowed to do this" in page.text_content("h1")
    assert "Members page" in page.text_content("main")
    assert page.locator("text=Back to your dashboard").count() == 1


def test_another_clinics_address_is_the_product_404(page, sign_in, owner, other_clinic, settings):
    settings.DEBUG = True
    sign_in(owner)

    response = page.goto(f"/c/{other_clinic.slug}/studies/")

    assert response.status == 404
    assert "This page does not exist" in page.text_content("h1")


def test_favicon_is_served(page):
    response = page.goto("/favicon.ico")

    assert response.status == 200
    assert response.headers["content-type"] in {"image/x-icon", "image/vnd.microsoft.icon"}

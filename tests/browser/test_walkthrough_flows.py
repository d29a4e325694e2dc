"""The walkthrough of issue 18 in Chromium, written as a clinic user notices each point."""

from __future__ import annotations

import re

import pytest
from django.core import mail

from studies.models import Study
from tests.studies.browse_support import make_study

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

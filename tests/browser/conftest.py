"""Browser tests: Playwright (sync API) driving Debian's Chromium against pytest-django's live_server."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from django.core.signals import request_finished, request_started

from tests.factories import PASSWORD

# Playwright's sync API runs an event loop in this thread; Django's ORM calls made by the test
# itself (fixtures, assertions) would otherwise be refused as "async unsafe".
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, live_server) -> Iterator[object]:
    """A fresh browser context (no cookies) on the live server; downloads allowed.

    Service workers are blocked: the clinic's pages would install the diagnostic viewer's (some 30 MB
    of OHIF's files through the test server) in every test; tests/browser/test_ohif.py allows it where
    it is what the test is about.
    """
    context = browser.new_context(base_url=live_server.url, accept_downloads=True, service_workers="block")
    context.set_default_timeout(20_000)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(autouse=True)
def _live_server_idle_at_the_end(live_server) -> Iterator[None]:
    """After a test's browser contexts are closed, wait for the requests they left running on the server.

    One still running (a viewer's image, say) may be writing its audit entry when the database is emptied
    after the test, and the flush meeting that transaction deadlocks. Set up after ``live_server`` and before
    the test's own page fixtures, so it is torn down after they closed their contexts and before the flush.
    """
    counter = _InFlight()
    request_started.connect(counter.started, weak=False)
    request_finished.connect(counter.finished, weak=False)
    try:
        yield
        counter.wait_idle()
    finally:
        request_started.disconnect(counter.started)
        request_finished.disconnect(counter.finished)


class _InFlight:
    """Counts the live server's requests that have started and not yet finished."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = threading.Condition()

    def started(self, **kwargs: object) -> None:
        with self.idle:
            self.count += 1

    def finished(self, **kwargs: object) -> None:
        with self.idle:
            self.count = max(0, self.count - 1)
            self.idle.notify_all()

    def wait_idle(self, seconds: float = 15.0) -> None:
        deadline = time.monotonic() + seconds
        with self.idle:
            while self.count and time.monotonic() < deadline:
                self.idle.wait(deadline - time.monotonic())


@pytest.fixture
def sign_in(page) -> Callable[..., None]:
    """Sign a user in through the real login form."""

    def _sign_in(user, password: str = PASSWORD) -> None:
        page.goto("/accounts/login/")
        page.fill("#id_username", user.email)
        page.fill("#id_password", password)
        page.click("main button[type=submit]")
        page.wait_for_load_state()

    return _sign_in

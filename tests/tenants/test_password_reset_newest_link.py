"""Only the newest password-reset link works: asking again kills the links mailed before."""

from __future__ import annotations

import re
from http import HTTPStatus

import pytest
from django.core import mail
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from tests.factories import PASSWORD

# Reset mails are queued by the request and sent by the worker: here, in place.
pytestmark = pytest.mark.usefixtures("tasks_run_inline")

NEW_PASSWORD = "Copper-Heron-Meadow-58"
DEAD_LINK = "has been used already or has expired"


def ask_for_reset(email: str) -> str:
    """Ask for a reset as a stranger would and return the path of the link in the mail."""
    Client().post("/accounts/password/reset/", {"email": email})
    return re.search(r"http://testserver(/accounts/password/reset/\S+/\S+/)", mail.outbox[-1].body).group(1)


def set_password_through(link: str) -> Client:
    """Follow a reset link in a fresh browser and submit a new password on whatever page it leads to."""
    browser = Client()
    page = browser.get(link, follow=True)
    form_url = page.redirect_chain[-1][0] if page.redirect_chain else link
    browser.post(form_url, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})
    return browser


def test_an_earlier_reset_link_is_refused_once_a_new_one_is_asked_for(owner, clinic):
    first = ask_for_reset(owner.email)
    ask_for_reset(owner.email)

    page = Client().get(first, follow=True)
    set_password_through(first)

    assert DEAD_LINK in page.content.decode()
    assert "new_password1" not in page.content.decode()
    owner.refresh_from_db()
    assert owner.check_password(PASSWORD)


def test_the_newest_reset_link_sets_the_password_and_then_dies(owner, clinic):
    ask_for_reset(owner.email)
    newest = ask_for_reset(owner.email)

    set_password_through(newest)

    owner.refresh_from_db()
    assert owner.check_password(NEW_PASSWORD)
    assert DEAD_LINK in Client().get(newest, follow=True).content.decode()


def test_a_reset_form_opened_before_a_new_request_cannot_set_the_password(owner, clinic):
    first = ask_for_reset(owner.email)
    browser = Client()
    form_url = browser.get(first)["Location"]
    ask_for_reset(owner.email)

    response = browser.post(form_url, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})

    assert response.status_code == HTTPStatus.OK
    assert DEAD_LINK in response.content.decode()
    owner.refresh_from_db()
    assert owner.check_password(PASSWORD)


def test_asking_again_for_an_unknown_address_answers_like_for_a_known_one(owner, clinic):
    known = [Client().post("/accounts/password/reset/", {"email": owner.email}) for _ in range(2)]
    unknown = [Client().post("/accounts/password/reset/", {"email": "nobody@nowhere.example"}) for _ in range(2)]

    assert {(a.status_code, a["Location"]) for a in known + unknown} == {
        (HTTPStatus.FOUND, "/accounts/password/reset/sent/")
    }
    assert len(mail.outbox) == 2


def test_the_request_does_the_same_work_for_a_known_and_an_unknown_address(owner, clinic, monkeypatch):
    # The account is looked up, stamped and mailed by the worker: the request's time tells nothing.
    from tenants import tasks

    queued: list[dict] = []
    monkeypatch.setattr(tasks.password_reset_mail, "delay", lambda **kwargs: queued.append(kwargs))
    statements = {}
    for email in (owner.email, "nobody@nowhere.example"):
        with CaptureQueriesContext(connection) as captured:
            answer = Client().post("/accounts/password/reset/", {"email": email})
        assert answer["Location"] == "/accounts/password/reset/sent/"
        statements[email] = [query["sql"].replace(email, "?") for query in captured.captured_queries]

    assert statements[owner.email] == statements["nobody@nowhere.example"]
    assert not mail.outbox
    assert [job["email"] for job in queued] == [owner.email, "nobody@nowhere.example"]

    for job in queued:  # what the worker then does
        tasks.password_reset_mail.run(**job)
    (message,) = mail.outbox
    assert message.to == [owner.email]
    assert re.search(r"http://testserver/accounts/password/reset/\S+/\S+/", message.body)

"""portal.messages: messages made lazily still reach the next page."""

from __future__ import annotations

from django.test import Client


def test_a_message_added_before_a_redirect_is_shown_on_the_next_page(owner):
    client = Client()
    client.force_login(owner)

    response = client.post("/accounts/logout/", follow=True)

    assert "You are signed out." in response.content.decode()


def test_a_message_is_shown_once(owner):
    client = Client()
    client.force_login(owner)
    client.post("/accounts/logout/", follow=True)

    response = client.get("/accounts/login/")

    assert "You are signed out." not in response.content.decode()

"""The audit trail is append-only in the database, and `verify_audit_log` detects tampering anyway."""

from __future__ import annotations

import pytest
from django.core.management import ManagementUtility, call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from tenants.audit import audit_event_digest, audit_record
from tenants.models import AuditChain, AuditEvent
from tenants.tasks import audit_chains_check
from tests.factories import make_user

# The triggers exist in PostgreSQL only.
pytestmark = pytest.mark.postgresql


@pytest.fixture
def trail(clinic, other_clinic, owner):
    """A few entries in clinic A's chain (after the clinic.created entry), one in clinic B and one global."""
    for number in range(4):
        audit_record(clinic=clinic, action="study.viewed", actor=owner, object_type="study", object_id=f"s{number}")
    audit_record(clinic=other_clinic, action="study.viewed", actor_label="someone", object_type="study", object_id="x")
    audit_record(clinic=None, action="auth.login_failed", actor_label="nobody@example.org", result="failure")
    return AuditEvent.objects.for_clinic(clinic).order_by("sequence")


def _run_as_untrusted(sql: str, params: list | None = None) -> None:
    """Tamper with the trail the way a database superuser could: with triggers switched off."""
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        try:
            cursor.execute(sql, params or [])
        finally:
            cursor.execute("SET session_replication_role = origin")


@pytest.fixture
def verify_exit_code(monkeypatch):
    """Run the command as `manage.py verify_audit_log ...` does and return its exit status."""
    # manage.py closes every connection when a command ends; here that would end the test's transaction.
    monkeypatch.setattr("django.core.management.base.connections.close_all", lambda: None)
    return _run_verify


def _run_verify(*argv: str) -> int:
    with pytest.raises(SystemExit) as exited:
        ManagementUtility(["manage.py", "verify_audit_log", "--skip-checks", *argv]).execute()
        raise SystemExit(0)
    return int(exited.value.code or 0)


def test_database_refuses_to_change_an_entry(trail):
    entry = trail.first()

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=entry.pk).update(result="failure")

    entry.refresh_from_db()
    assert entry.result == "success"


def test_database_refuses_to_delete_an_entry(trail):
    count = trail.count()

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=trail.last().pk).delete()

    assert trail.count() == count


def test_database_refuses_to_rewind_a_chain_head(clinic, trail):
    head = AuditChain.objects.get(key=str(clinic.uuid))

    with pytest.raises(DatabaseError, match="only move forward"), transaction.atomic():
        AuditChain.objects.filter(pk=head.pk).update(last_sequence=1)

    head.refresh_from_db()
    assert head.last_sequence == trail.count()


def test_deleting_a_user_keeps_their_entries_and_the_chain_intact(clinic):
    leaver = make_user(email="leaver@clinic-a.example")
    audit_record(clinic=clinic, action="study.viewed", actor=leaver, object_type="study", object_id="s1")

    leaver.delete()

    entry = AuditEvent.objects.for_clinic(clinic).get(action="study.viewed")
    assert entry.actor_id is None
    assert entry.actor_label == "leaver@clinic-a.example"
    call_command("verify_audit_log")


def test_intact_trail_passes(trail, capsys, verify_exit_code):
    assert verify_exit_code() == 0

    out = capsys.readouterr().out
    assert "no breaks" in out
    assert "3 chain(s)" in out


def test_edited_entry_is_detected(clinic, trail, capsys, verify_exit_code):
    _run_as_untrusted("UPDATE tenants_auditevent SET object_id = 'other' WHERE id = %s", [trail[2].pk])

    assert verify_exit_code() == 1

    out = capsys.readouterr().out
    assert f"BROKEN chain {clinic.slug}" in out
    assert "entry 3 was changed after it was written" in out


def test_deleted_entry_is_detected(clinic, trail, capsys, verify_exit_code):
    _run_as_untrusted("DELETE FROM tenants_auditevent WHERE id = %s", [trail[1].pk])

    assert verify_exit_code() == 1

    out = capsys.readouterr().out
    assert "entries 2..2 are missing" in out


def test_entries_cut_off_the_end_are_detected(clinic, trail, capsys, verify_exit_code):
    last_two = [event.pk for event in trail][-2:]
    _run_as_untrusted("DELETE FROM tenants_auditevent WHERE id = ANY(%s)", [last_two])

    assert verify_exit_code() == 1

    assert "the chain ends early; it should reach 5" in capsys.readouterr().out


def test_rewritten_last_entry_with_a_recomputed_hash_is_detected(clinic, trail, capsys, verify_exit_code):
    last = trail.last()
    last.object_id = "forged"
    forged_hash = audit_event_digest(last)
    _run_as_untrusted("UPDATE tenants_auditevent SET object_id = 'forged', hash = %s WHERE id = %s",
                      [forged_hash, last.pk])

    assert verify_exit_code() == 1

    assert "entry 5 does not match the hash recorded in the chain head" in capsys.readouterr().out


def test_global_chain_is_checked_too(trail, capsys, verify_exit_code):
    _run_as_untrusted("UPDATE tenants_auditevent SET actor_label = 'someone else' WHERE clinic_id IS NULL")

    assert verify_exit_code() == 1

    assert "BROKEN chain global: entry 1 was changed" in capsys.readouterr().out


def test_clinic_option_checks_only_that_clinic(clinic, other_clinic, trail):
    _run_as_untrusted("UPDATE tenants_auditevent SET object_id = 'other' WHERE id = %s", [trail[2].pk])

    call_command("verify_audit_log", "--clinic", other_clinic.slug)
    with pytest.raises(CommandError, match="1 break"):
        call_command("verify_audit_log", "--clinic", clinic.slug)


def test_unknown_clinic_is_an_error(trail):
    with pytest.raises(CommandError, match="No clinic with the slug 'nope'"):
        call_command("verify_audit_log", "--clinic", "nope")


def test_daily_check_mails_operators_about_a_break(clinic, trail, settings, mailoutbox):
    settings.OPERATOR_EMAILS = ["ops@pacs.example.org"]
    _run_as_untrusted("UPDATE tenants_auditevent SET object_id = 'other' WHERE id = %s", [trail[2].pk])

    breaks = audit_chains_check.run()

    assert breaks == 1
    (mail,) = mailoutbox
    assert mail.to == ["ops@pacs.example.org"]
    assert "1 break(s)" in mail.subject
    assert f"chain {clinic.slug} ({clinic.uuid}): entry 3 was changed after it was written" in mail.body


def test_daily_check_is_quiet_when_the_trail_is_intact(trail, settings, mailoutbox):
    settings.OPERATOR_EMAILS = ["ops@pacs.example.org"]

    assert audit_chains_check.run() == 0
    assert audit_chains_check.run() == 0

    assert mailoutbox == []

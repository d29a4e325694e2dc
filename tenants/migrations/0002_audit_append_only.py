"""Make the audit trail append-only in PostgreSQL.

A trigger refuses UPDATE and DELETE on audit entries; the hash chain (tenants.audit) stays the way an
edit made behind the database's back (a superuser disabling the trigger, a restored dump) is detected.
The one UPDATE allowed is Django's ``on_delete=SET_NULL`` when a user account is deleted: it clears
``actor_id`` only, which the hash does not cover (the entry keeps ``actor_label``).

A second trigger keeps the chain heads from moving backwards or disappearing, so that cutting entries
off the end of a chain cannot be hidden by rewinding its head. TRUNCATE is left alone: test databases
are flushed with it, and it removes the heads too (``verify_audit_log`` then reports nothing to check,
which operators see as an empty trail). SQLite (the default run) gets no trigger; the chain still
detects tampering there.
"""

from django.db import migrations

FORWARD = r"""
CREATE OR REPLACE FUNCTION tenants_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.actor_id IS NULL
       AND (to_jsonb(OLD) - 'actor_id') = (to_jsonb(NEW) - 'actor_id') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only: % on tenants_auditevent is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS tenants_auditevent_append_only ON tenants_auditevent;
CREATE TRIGGER tenants_auditevent_append_only
    BEFORE UPDATE OR DELETE ON tenants_auditevent
    FOR EACH ROW EXECUTE FUNCTION tenants_auditevent_append_only();

CREATE OR REPLACE FUNCTION tenants_auditchain_forward_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.key = OLD.key AND NEW.last_sequence >= OLD.last_sequence THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit chain heads only move forward: % on tenants_auditchain is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS tenants_auditchain_forward_only ON tenants_auditchain;
CREATE TRIGGER tenants_auditchain_forward_only
    BEFORE UPDATE OR DELETE ON tenants_auditchain
    FOR EACH ROW EXECUTE FUNCTION tenants_auditchain_forward_only();
"""

BACKWARD = r"""
DROP TRIGGER IF EXISTS tenants_auditchain_forward_only ON tenants_auditchain;
DROP FUNCTION IF EXISTS tenants_auditchain_forward_only();
DROP TRIGGER IF EXISTS tenants_auditevent_append_only ON tenants_auditevent;
DROP FUNCTION IF EXISTS tenants_auditevent_append_only();
"""


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD, params=None)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("tenants", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(forward, backward, elidable=False),
    ]

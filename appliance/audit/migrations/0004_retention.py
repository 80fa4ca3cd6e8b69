"""Retention: AuditPrune, and a trigger that lets a prune (and nothing else) delete old events."""

import uuid

import django.utils.timezone
from django.db import migrations, models

FUNCTION = """
CREATE OR REPLACE FUNCTION audit_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    upto text := current_setting('appliance.audit_prune_upto', true);
BEGIN
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'audit_auditevent' AND upto IS NOT NULL AND upto <> ''
       AND OLD.sequence <= upto::bigint THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_prune_append_only BEFORE UPDATE OR DELETE ON audit_auditprune
    FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_prune_no_truncate BEFORE TRUNCATE ON audit_auditprune
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTION, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0003_append_only")]

    operations = [
        migrations.CreateModel(
            name="AuditPrune",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("upto_sequence", models.BigIntegerField(unique=True)),
                ("anchor_hash", models.CharField(max_length=64)),
                ("cutoff", models.DateTimeField()),
                ("time", models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={"ordering": ["upto_sequence"]},
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]

"""Events are written unlinked and linked into the chain just after their transaction
commits (chain.link_pending), so that no writer holds the chain's lock to its commit.

The trigger now lets one UPDATE through: giving an unlinked event its sequence and
hashes, with every other column unchanged. A linked event stays immutable.
"""

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
    IF TG_OP = 'UPDATE' AND TG_TABLE_NAME = 'audit_auditevent' AND OLD.sequence IS NULL
       AND NEW.sequence IS NOT NULL AND NEW.hash <> '' AND NEW.prev_hash <> ''
       AND (NEW.id, NEW.time, NEW.actor, NEW.origin, NEW.action, NEW.target_type, NEW.target_id,
            NEW.target_repr, NEW.changes, NEW.source_address, NEW.correlation_id)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.time, OLD.actor, OLD.origin, OLD.action, OLD.target_type, OLD.target_id,
            OLD.target_repr, OLD.changes, OLD.source_address, OLD.correlation_id) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit trail is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FUNCTION, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0004_retention")]

    operations = [
        migrations.AlterField(
            model_name="auditevent",
            name="sequence",
            field=models.BigIntegerField(null=True, unique=True),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(condition=models.Q(("sequence__isnull", True)), fields=["time"], name="audit_event_unlinked"),
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]

"""Turns the audit trail into a hash chain: sequence, prev_hash, hash; checkpoints."""

import uuid

import django.utils.timezone
from django.db import migrations, models


def backfill(apps, schema_editor):
    # Chain any events written before the chain existed, in the order they were written.
    from appliance.audit.chain import GENESIS, _CHAINED_FIELDS, compute_hash

    AuditEvent = apps.get_model("audit", "AuditEvent")
    prev = GENESIS
    for sequence, event in enumerate(AuditEvent.objects.order_by("time", "id"), start=1):
        event.sequence = sequence
        event.prev_hash = prev
        event.hash = compute_hash({name: getattr(event, name) for name in _CHAINED_FIELDS})
        event.save(update_fields=["sequence", "prev_hash", "hash"])
        prev = event.hash


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [
        migrations.AlterModelOptions(name="auditevent", options={"ordering": ["sequence"]}),
        migrations.AddField(model_name="auditevent", name="sequence", field=models.BigIntegerField(null=True)),
        migrations.AddField(model_name="auditevent", name="prev_hash", field=models.CharField(default="", max_length=64), preserve_default=False),
        migrations.AddField(model_name="auditevent", name="hash", field=models.CharField(default="", max_length=64), preserve_default=False),
        migrations.AlterField(
            model_name="auditevent",
            name="time",
            field=models.DateTimeField(db_index=True, default=django.utils.timezone.now),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
        migrations.AlterField(model_name="auditevent", name="sequence", field=models.BigIntegerField(unique=True)),
        migrations.CreateModel(
            name="AuditCheckpoint",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("sequence", models.BigIntegerField()),
                ("event_hash", models.CharField(max_length=64)),
                ("created", models.DateTimeField(default=django.utils.timezone.now)),
                ("key_id", models.CharField(max_length=32)),
                ("public_key", models.CharField(help_text="Ed25519 public key, base64", max_length=64)),
                ("signature", models.CharField(help_text="Ed25519 signature of the canonical payload, base64", max_length=128)),
            ],
            options={"ordering": ["sequence", "created"]},
        ),
    ]

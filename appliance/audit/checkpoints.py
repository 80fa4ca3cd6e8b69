"""Signed checkpoints of the audit chain head (Ed25519).

The signing key is read from APPLIANCE_AUDIT_SIGNING_KEY_FILE (PEM, PKCS#8), or
made once under var/secrets/ (mode 0600). A checkpoint exported as JSON carries
the public key, so it can be verified anywhere; an auditor pins the key id.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from appliance.audit.chain import link_pending
from appliance.audit.models import AuditCheckpoint, AuditEvent


@lru_cache(maxsize=1)
def signing_key() -> Ed25519PrivateKey:
    configured = os.environ.get("APPLIANCE_AUDIT_SIGNING_KEY_FILE")
    path = Path(configured) if configured else settings.VAR_DIR / "secrets" / "audit-signing-key.pem"
    if not path.exists():
        if configured:
            raise FileNotFoundError(f"APPLIANCE_AUDIT_SIGNING_KEY_FILE={path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()[:32]


def payload(sequence: int, event_hash: str, created: str) -> bytes:
    return json.dumps({"sequence": sequence, "event_hash": event_hash, "created": created}, sort_keys=True,
                      separators=(",", ":")).encode()  # fmt: skip


def _created_text(checkpoint: AuditCheckpoint) -> str:
    return checkpoint.created.astimezone(UTC).isoformat(timespec="microseconds")


@transaction.atomic
def checkpoint_create(*, sequence: int | None = None) -> AuditCheckpoint | None:
    """Signs the current head (or the given event); None when there is no such event."""
    link_pending()
    events = AuditEvent.objects.filter(sequence__isnull=False).order_by("-sequence")
    if sequence is not None:
        events = events.filter(sequence=sequence)
    head = events.values_list("sequence", "hash").first()
    if head is None or head[0] is None:  # filtered to linked events: the second never holds
        return None
    key = signing_key()
    raw = _raw_public(key.public_key())
    checkpoint = AuditCheckpoint(sequence=head[0], event_hash=head[1], created=timezone.now(), key_id=key_id(raw),
                                 public_key=base64.b64encode(raw).decode())  # fmt: skip
    signature = key.sign(payload(checkpoint.sequence, checkpoint.event_hash, _created_text(checkpoint)))
    checkpoint.signature = base64.b64encode(signature).decode()
    checkpoint.save(force_insert=True)
    return checkpoint


def verify_checkpoint(checkpoint: AuditCheckpoint) -> str:
    """'' when the signature holds, else what is wrong."""
    try:
        raw = base64.b64decode(checkpoint.public_key)
        public = Ed25519PublicKey.from_public_bytes(raw)
        public.verify(
            base64.b64decode(checkpoint.signature),
            payload(checkpoint.sequence, checkpoint.event_hash, _created_text(checkpoint)),
        )
    except (InvalidSignature, ValueError):
        return f"checkpoint at #{checkpoint.sequence} has a bad signature"
    if key_id(raw) != checkpoint.key_id:
        return f"checkpoint at #{checkpoint.sequence} names a key it was not signed with"
    return ""


def checkpoint_export(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    return {
        "sequence": checkpoint.sequence,
        "event_hash": checkpoint.event_hash,
        "created": _created_text(checkpoint),
        "key_id": checkpoint.key_id,
        "public_key": checkpoint.public_key,
        "signature": checkpoint.signature,
    }

"""Bearer secrets (inference API keys, operator tokens): made here, stored hashed.

The secrets are 256 random bits, so a single SHA-256 is enough to make a stolen
database useless (no dictionary to try) and keeps the gateway's lookup at one
hash per request. Only the hash and a short display prefix are stored.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass


@dataclass(frozen=True)
class NewSecret:
    """A freshly made secret: the plaintext is shown once and never stored."""

    plaintext: str
    prefix: str
    digest: str


def hash_secret(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def make_secret(kind: str) -> NewSecret:
    """kind is a short tag such as 'ak' (API key) or 'op' (operator token)."""
    prefix = f"{kind}_{secrets.token_hex(4)}"
    plaintext = f"{prefix}_{secrets.token_urlsafe(32)}"
    return NewSecret(plaintext=plaintext, prefix=prefix, digest=hash_secret(plaintext))

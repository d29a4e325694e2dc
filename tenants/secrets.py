"""Random bearer secrets (invitations, API tokens, share links) and how they are stored: hashed."""

from __future__ import annotations

import hashlib
import secrets


def new_secret(prefix: str = "") -> str:
    """Return a new URL-safe secret with 256 bits of randomness."""
    return prefix + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    """Hash a high-entropy secret for storage; a plain SHA-256 suffices since it cannot be guessed."""
    return hashlib.sha256(secret.encode()).hexdigest()

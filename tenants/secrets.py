"""Random bearer secrets (invitations, API tokens, share links) and how they are stored: hashed.

Password-reset links are signed instead (Django's HMAC token), by the generator at the end.
"""

from __future__ import annotations

import hashlib
import secrets

from django.contrib.auth import tokens as auth_tokens
from django.contrib.auth.base_user import AbstractBaseUser


def new_secret(prefix: str = "") -> str:
    """Return a new URL-safe secret with 256 bits of randomness."""
    return prefix + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    """Hash a high-entropy secret for storage; a plain SHA-256 suffices since it cannot be guessed."""
    return hashlib.sha256(secret.encode()).hexdigest()


class PasswordResetTokenGenerator(auth_tokens.PasswordResetTokenGenerator):
    """Django's reset-link signature, also bound to the user's newest reset request."""

    def _make_hash_value(self, user: AbstractBaseUser, timestamp: int) -> str:
        requested_at = getattr(user, "password_reset_requested_at", None)
        # A POSIX float keeps the microseconds (two requests in one second differ) and reads the same
        # whether the datetime comes from timezone.now() or back from the database.
        stamp = f"{requested_at.timestamp():.6f}" if requested_at is not None else ""
        return super()._make_hash_value(user, timestamp) + stamp


password_reset_token_generator = PasswordResetTokenGenerator()

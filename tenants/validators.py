"""Password rules beyond Django's own (length, common passwords, similarity): character classes, strength."""

from __future__ import annotations

import re
import string

from django.core.exceptions import ValidationError
from zxcvbn import zxcvbn


class CharacterClassValidator:
    """Require lower case, upper case, a digit and a special character, naming each one missing."""

    RULES = (
        ("password_no_lower", "a lower-case letter", str.islower),
        ("password_no_upper", "an upper-case letter", str.isupper),
        ("password_no_digit", "a digit", str.isdigit),
        ("password_no_special", "a special character (such as ! ? # or %)", lambda c: c in string.punctuation or c == " "),
    )

    def validate(self, password: str, user: object = None) -> None:
        errors = [
            ValidationError(f"The password must contain {label}.", code=code)
            for code, label, test in self.RULES
            if not any(test(char) for char in password)
        ]
        if errors:
            raise ValidationError(errors)

    def get_help_text(self) -> str:
        return "Your password must contain a lower-case letter, an upper-case letter, a digit and a special character."


class StrengthValidator:
    """Refuse a password that a guesser would find quickly, as NIST SP 800-63B asks.

    Composition rules alone accept ``Password1234!``; zxcvbn estimates how many guesses a password
    takes (dictionaries of common and breached passwords, names, keyboard patterns, dates, l33t),
    offline. ``min_score`` 3 means about 10^8 guesses or more ("safely unguessable" in zxcvbn's terms).
    """

    def __init__(self, min_score: int = 3, user_attributes: tuple[str, ...] = ("email", "full_name")) -> None:
        self.min_score = min_score
        self.user_attributes = user_attributes

    def _user_inputs(self, user: object) -> list[str]:
        inputs: list[str] = []
        for attribute in self.user_attributes:
            value = str(getattr(user, attribute, "") or "")
            if value:
                inputs.append(value)
                inputs.extend(part for part in re.split(r"[\W_]+", value) if len(part) >= 3)
        return inputs

    def validate(self, password: str, user: object = None) -> None:
        # zxcvbn's cost grows with length; past 100 characters a password is not guessable anyway.
        result = zxcvbn(password[:100], user_inputs=self._user_inputs(user))
        if result["score"] >= self.min_score:
            return
        feedback = result["feedback"]
        hints = " ".join(part for part in [feedback.get("warning", ""), *feedback.get("suggestions", [])] if part)
        message = "This password is too easy to guess"
        message += f": {hints}" if hints else "; add a few uncommon words."
        raise ValidationError(message, code="password_too_guessable")

    def get_help_text(self) -> str:
        return "Your password must not be easy to guess: a few uncommon words make a strong one."

"""Password rules beyond Django's own (length, common passwords, similarity)."""

from __future__ import annotations

import string

from django.core.exceptions import ValidationError


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

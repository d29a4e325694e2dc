"""Sizes in decimal units everywhere (1 GB = 10^9 bytes): storage plans are sold that way."""

from __future__ import annotations

from django import template

register = template.Library()


def decimal_size(value: int | None) -> str:
    """Format a byte count in decimal units, the same way on every page, e-mail and the upload page."""
    size = float(value or 0)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1000
    return f"{size:,.1f} TB"


register.filter("bytes", decimal_size)

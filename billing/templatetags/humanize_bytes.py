from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def bytes(value: int | None) -> str:  # noqa: A001 - the filter's name in templates
    """Format a byte count in decimal units, as storage plans are sold (1 GB = 10^9 bytes)."""
    size = float(value or 0)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1000
    return f"{size:,.1f} TB"


@register.filter
def cents(value: int | None) -> str:
    value = int(value or 0)
    return f"{value // 100}.{value % 100:02d}"

from __future__ import annotations

from django import template

from tenants.templatetags.units import decimal_size

register = template.Library()
# One formatter for every page (tenants.templatetags.units); kept here under its old name for billing's pages.
register.filter("bytes", decimal_size)


@register.filter
def cents(value: int | None) -> str:
    value = int(value or 0)
    return f"{value // 100}.{value % 100:02d}"

"""The plans every installation starts with (DESIGN.md); operators edit them afterwards in the admin."""

from __future__ import annotations

from typing import Any

GB = 1000**3

# (code, name, storage bytes, price in cents per month, sort order)
DEFAULT_PLANS = [
    ("starter", "Starter", 100 * GB, 7999, 1),
    ("professional", "Professional", 500 * GB, 9999, 2),
    ("enterprise", "Enterprise", 2000 * GB, 49999, 3),
]


def plans_seed(plan_model: Any) -> None:
    """Create the default plans that do not exist yet; existing ones are left as operators set them."""
    for code, name, storage, price, order in DEFAULT_PLANS:
        plan_model.objects.get_or_create(
            code=code, defaults={"name": name, "storage_bytes": storage, "price_cents": price, "sort_order": order}
        )

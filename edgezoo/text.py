"""Short listings for messages: the first few items, then how many there are in all."""

from collections.abc import Iterable
from typing import Any


def preview(items: Iterable[Any], limit: int = 5) -> str:
    """ "a, b, c" or "a, b, c, d, e, ... (12 in all)"."""
    items = list(items)
    shown = ", ".join(map(str, items[:limit]))
    return shown if len(items) <= limit else f"{shown}, ... ({len(items)} in all)"

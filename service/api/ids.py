"""Ids that arrive as text (a ``Last-Event-ID`` header, the compare page's ``ids``)."""

from __future__ import annotations

import re

# ASCII digits only: str.isdigit() also accepts "²", which int() refuses. 18 digits fit a 64-bit column.
_ID = re.compile(r"[0-9]{1,18}")


def parse_id(text: str) -> int | None:
    """The id ``text`` spells, or None when it is not one."""
    return int(text) if _ID.fullmatch(text) else None

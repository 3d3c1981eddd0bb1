"""JSON the database accepts: non-finite numbers become null, and the document says where.

PostgreSQL's ``json`` type refuses NaN and Infinity (they are not JSON); SQLite stores them as bare
tokens that strict readers (the API's responses, browsers) reject later. A driver's diverged loss or
a hand-edited ``result.json`` must not stop a job from being recorded, so every JSON document the
service writes (a job's result and progress, event data, and through event data a trial's metrics)
passes through ``sanitize_document`` at the DB boundary: each non-finite float is replaced by
``None`` and its location is listed under ``NONFINITE_KEY`` in the document itself, e.g.

    {"union": null, "history": [{"loss": null}], "nonfinite": ["union", "history[0].loss"]}

Pure functions, no I/O.
"""

from __future__ import annotations

import math
from typing import Any

NONFINITE_KEY = "nonfinite"

JsonPath = tuple[str | int, ...]
"""Keys (dicts) and indices (lists) from the document's root to a value."""


def replace_nonfinite(value: Any) -> tuple[Any, list[JsonPath]]:
    """A copy of ``value`` with every non-finite float replaced by ``None`` (tuples become lists),
    and the paths of the replaced values in document order. Other values are returned unchanged."""
    found: list[JsonPath] = []

    def walk(v: Any, path: JsonPath) -> Any:
        if isinstance(v, float):
            if math.isfinite(v):
                return v
            found.append(path)
            return None
        if isinstance(v, dict):
            return {k: walk(x, (*path, k)) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [walk(x, (*path, i)) for i, x in enumerate(v)]
        return v

    return walk(value, ()), found


def format_path(path: JsonPath) -> str:
    """``("history", 0, "loss")`` -> ``"history[0].loss"``; the root is ``"$"``."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "$"


def sanitize_document(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """``doc`` ready for a JSON column: non-finite numbers replaced by null and listed (as
    ``format_path`` strings) under ``NONFINITE_KEY``, after any paths an earlier pass listed.
    A document without non-finite numbers is returned as an equal copy, without the key added."""
    if doc is None:
        return None
    clean, paths = replace_nonfinite(doc)
    if not paths:
        return clean
    previous = clean.get(NONFINITE_KEY)
    flags = [p for p in previous if isinstance(p, str)] if isinstance(previous, list) else []
    return clean | {NONFINITE_KEY: flags + [format_path(p) for p in paths]}

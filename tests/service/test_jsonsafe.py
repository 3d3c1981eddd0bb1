"""service.db.jsonsafe: properties of the DB-boundary sanitiser (NaN / Infinity -> null, flagged)."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from service.db.jsonsafe import NONFINITE_KEY, format_path, replace_nonfinite, sanitize_document

scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.floats(allow_nan=True)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=25,
)
documents = st.dictionaries(st.text(max_size=4), values, max_size=5)


def _at(value: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


def _nonfinite_count(value: Any) -> int:
    if isinstance(value, float):
        return 0 if math.isfinite(value) else 1
    if isinstance(value, dict):
        return sum(_nonfinite_count(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_nonfinite_count(v) for v in value)
    return 0


@given(values)
def test_every_nonfinite_number_is_replaced_by_none_and_located(value: Any) -> None:
    clean, paths = replace_nonfinite(value)
    assert len(paths) == _nonfinite_count(value)
    for path in paths:
        assert not math.isfinite(_at(value, path))
        assert _at(clean, path) is None
    json.dumps(clean, allow_nan=False)  # strict JSON: what PostgreSQL's json type accepts


@given(values)
def test_finite_values_are_left_exactly_as_they_were(value: Any) -> None:
    if _nonfinite_count(value):
        return
    clean, paths = replace_nonfinite(value)
    assert paths == [] and clean == value


@given(values)
def test_replacing_is_idempotent(value: Any) -> None:
    once, _ = replace_nonfinite(value)
    twice, paths = replace_nonfinite(once)
    assert paths == [] and twice == once


@given(documents)
def test_a_document_lists_its_replaced_paths_under_the_flag(doc: dict[str, Any]) -> None:
    out = sanitize_document(doc)
    assert out is not None
    json.dumps(out, allow_nan=False)
    _, paths = replace_nonfinite(doc)
    if not paths:
        assert out == doc
    else:
        assert out[NONFINITE_KEY][-len(paths):] == [format_path(p) for p in paths]
    assert sanitize_document(out) == out  # a second pass changes nothing


def test_paths_read_like_the_document() -> None:
    doc = {"union": float("nan"), "history": [{"loss": 1.0}, {"loss": float("-inf")}], "n": 3}
    assert sanitize_document(doc) == {"union": None, "history": [{"loss": 1.0}, {"loss": None}], "n": 3,
                                      NONFINITE_KEY: ["union", "history[1].loss"]}
    assert format_path(()) == "$" and format_path((0, "a")) == "[0].a"
    assert sanitize_document(None) is None

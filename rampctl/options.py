"""Reading what a user typed: ``KEY=VALUE`` options and spec files (``-`` = stdin).

Bad input prints one ``error:`` line and exits 2 (a usage error).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rampctl.console import USAGE_ERROR, fail


def parse_pairs(items: Sequence[str], option: str, convert: Callable[[str], Any] = str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": convert("1"), ...}``; bad items exit with a usage error."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            fail(f"{option} expects KEY=VALUE, got {item!r}", USAGE_ERROR)
        try:
            out[key] = convert(value)
        except ValueError:
            fail(f"{option} {key}: cannot read {value!r} as a number", USAGE_ERROR)
    return out


def read_spec_file(path: Path, what: str, *, yaml_suffixes: bool = False) -> dict[str, Any]:
    """The JSON object in ``path`` (``-``: stdin); with ``yaml_suffixes``, a ``.yaml``/``.yml``
    file is read as YAML. ``what`` names the object in error messages (e.g. "a job spec")."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}", USAGE_ERROR)
    as_yaml = yaml_suffixes and path.suffix in (".yaml", ".yml")
    if as_yaml:
        import yaml  # only sweeps read YAML; keep it off the other commands' start-up

        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as e:
            fail(f"{path} is not valid YAML: {e}", USAGE_ERROR)
    else:
        try:
            spec = json.loads(text)
        except ValueError as e:
            fail(f"{path} is not valid JSON: {e}", USAGE_ERROR)
    if not isinstance(spec, dict):
        kind = "an object" if yaml_suffixes else "a JSON object"
        fail(f"{path} must hold {kind} ({what})", USAGE_ERROR)
    return spec

"""Per-sample flags inside ``metrics.json``, so two evaluations on the same points can be paired
from their metrics alone (the service's stored results included). Torch-free and numpy-free.

``metrics["per_sample"]``::

    {"points": "<sha256 of the evaluated inputs and labels>", "n": 500, "encoding": "bits-le-base64",
     "flags": {"clean": "...", "linf": "...", "l2": "...", "l1": "...", "union": "..."}}

Each flag list is packed 8 points to a byte, point i in bit (i mod 8) of byte i // 8 (little-endian
bit order, numpy's ``packbits(bitorder="little")``), then base64: 10,000 points take 1,668
characters per list. ``points`` names the evaluated points themselves (``points_digest``): two
evaluations are paired only when their digests are equal, whatever their dataset names say.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

ENCODING = "bits-le-base64"
PER_SAMPLE_KEY = "per_sample"


def encode_flags(flags: Iterable[bool]) -> str:
    """Pack booleans (point i -> bit i mod 8 of byte i // 8) and base64 them."""
    out = bytearray()
    byte, bit = 0, 0
    for flag in flags:
        if flag:
            byte |= 1 << bit
        bit += 1
        if bit == 8:
            out.append(byte)
            byte, bit = 0, 0
    if bit:
        out.append(byte)
    return base64.b64encode(bytes(out)).decode("ascii")


def decode_flags(text: str, n: int) -> list[bool]:
    """The ``n`` booleans ``encode_flags`` packed; ValueError when ``text`` cannot hold them."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as e:
        raise ValueError(f"per-sample flags are not base64: {e}") from None
    if len(raw) != (n + 7) // 8:
        raise ValueError(f"per-sample flags hold {len(raw)} bytes, {n} points need {(n + 7) // 8}")
    return [bool(raw[i // 8] >> (i % 8) & 1) for i in range(n)]


def points_digest(*arrays: bytes) -> str:
    """A digest of the evaluated points (the caller passes the inputs' and labels' raw bytes)."""
    h = hashlib.sha256()
    for data in arrays:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def per_sample_block(points: str, flags: Mapping[str, Sequence[bool]]) -> dict[str, Any]:
    """The ``metrics["per_sample"]`` entry for flag lists of equal length."""
    lengths = {len(f) for f in flags.values()}
    if len(lengths) != 1:
        raise ValueError(f"per-sample flag lists differ in length: {sorted(lengths)}")
    return {"points": points, "n": lengths.pop(), "encoding": ENCODING,
            "flags": {name: encode_flags(f) for name, f in flags.items()}}


def read_per_sample(metrics: Mapping[str, Any] | None) -> tuple[str, dict[str, list[bool]]] | None:
    """(points digest, name -> flags) of a metrics mapping, or None when it has none (or a broken one)."""
    if not isinstance(metrics, Mapping):
        return None
    block = metrics.get(PER_SAMPLE_KEY)
    if not isinstance(block, Mapping) or block.get("encoding") != ENCODING:
        return None
    n, points, flags = block.get("n"), block.get("points"), block.get("flags")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or not isinstance(points, str) \
            or not isinstance(flags, Mapping):
        return None
    try:
        return points, {str(k): decode_flags(v, n) for k, v in flags.items() if isinstance(v, str)}
    except ValueError:
        return None

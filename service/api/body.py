"""Request bodies as JSON: strict for users, lenient for drivers; errors as 400 / 422."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import HTTPException, Request

from service.api.numbers import bounded_numbers, check_numbers
from service.jobs.specs import check_json_value, sanitize_json


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _float_or_none(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def decode_json(body: bytes, *, lenient: bool = False) -> Any:
    """Strict JSON: no NaN/Infinity, bounded nesting, numbers every layer can hold
    (``service.api.numbers``); errors -> 400 (not JSON) / 422 (naming the field).

    ``lenient`` (driver reports): NaN/Infinity and out-of-range numbers become null instead of an
    error, since a diverged loss is a fact to record, not a malformed request."""
    if not body.strip():
        raise HTTPException(400, detail="request body is empty: send a JSON object")
    try:
        if lenient:
            payload = json.loads(body, parse_float=_float_or_none, parse_constant=lambda _: None)
            return bounded_numbers(sanitize_json(payload))
        # 1e400 reads as inf here and is refused below, naming its field.
        payload = json.loads(body, parse_float=float, parse_constant=_reject_constant)
    except RecursionError:
        raise HTTPException(400, detail="invalid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, detail=f"invalid JSON: {str(exc)[:200]}") from None
    check_json_value(payload)
    check_numbers(payload)
    return payload


async def json_body(request: Request) -> Any:
    return decode_json(await request.body())

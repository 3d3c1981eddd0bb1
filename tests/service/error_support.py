"""Reading the API's one error model in tests."""

from __future__ import annotations


def detail_text(r: object) -> str:
    """An error body's detail as one string: 422's list of issues as ``field: msg; ...``."""
    detail = r.json()["detail"]  # type: ignore[attr-defined]
    if isinstance(detail, list):
        return "; ".join(f"{item['field']}: {item['msg']}" for item in detail)
    return str(detail)


def assert_error_model(r: object) -> None:
    """The one error model: 422 -> a list of {loc, msg, type, field}; anything else -> a string."""
    body = r.json()  # type: ignore[attr-defined]
    if r.status_code == 422:  # type: ignore[attr-defined]
        assert isinstance(body["detail"], list) and body["detail"], body
        for item in body["detail"]:
            assert isinstance(item["loc"], list) and item["msg"] and item["type"] and item["field"], item
    else:
        assert isinstance(body["detail"], str) and body["detail"], body

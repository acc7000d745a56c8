"""The one JSON error envelope, checked to its exact shape (for any HTTP client's answer)."""

from __future__ import annotations

import json
from typing import Any

from corral.errors import ERRORS_BY_CODE


def envelope_error(status: int, content_type: str, body: bytes | str) -> dict[str, Any]:
    """The ``error`` of an error answer: ``{"error": {"code", "message", "details"?}}`` and nothing else.

    Its code is a known one, and the one whose status the answer has.
    """
    assert content_type.startswith("application/json"), (status, content_type, body)
    parsed = json.loads(body)
    assert isinstance(parsed, dict) and set(parsed) == {"error"}, parsed
    error = parsed["error"]
    assert isinstance(error, dict), error
    assert set(error) in ({"code", "message"}, {"code", "message", "details"}), error
    assert error["code"] in ERRORS_BY_CODE, error
    assert ERRORS_BY_CODE[error["code"]].status == status, (status, error)
    assert isinstance(error["message"], str) and error["message"]
    if "details" in error:
        assert isinstance(error["details"], dict) and error["details"]
    return error

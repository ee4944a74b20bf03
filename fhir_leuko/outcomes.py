"""OperationOutcome error responses: built here and nowhere else.

Every HTTP surface answers an error with one OperationOutcome of one issue. The media type is
the endpoint's: CDS Hooks endpoints answer ``application/json`` (the app's error handlers),
FHIR endpoints (the Subscription notification receiver) ``application/fhir+json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson
from starlette.responses import Response

JSON_MEDIA: Final = "application/json"
FHIR_JSON_MEDIA: Final = "application/fhir+json"
#: The challenge a 401 carries (RFC 6750).
BEARER_CHALLENGE: Final = {"WWW-Authenticate": "Bearer"}


def outcome(code: str, text: str | None) -> dict[str, Any]:
    """An OperationOutcome with one error issue; ``diagnostics`` only when there is a text."""
    issue: dict[str, str] = {"severity": "error", "code": code}
    if text:
        issue["diagnostics"] = text
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def outcome_response(
    status: int,
    code: str,
    text: str | None,
    headers: Mapping[str, str] | None = None,
    *,
    media_type: str = JSON_MEDIA,
) -> Response:
    """An error response whose body is :func:`outcome`."""
    return Response(
        orjson.dumps(outcome(code, text)),
        status_code=status,
        media_type=media_type,
        headers=headers,
    )

"""One exception hierarchy for fhir-leuko.

The hierarchy *is* the policy: callers decide by type, never by parsing messages.
Edges translate these in one place each: the CLI into exit codes, FHIR endpoints into
OperationOutcome, CDS Hooks endpoints into the CDS error shape.
"""

from __future__ import annotations


class LeukoError(Exception):
    """Base class. ``str(err)`` is one human sentence that names what is wrong (never PHI)."""


class InputError(LeukoError):
    """The input is not what we can read: not JSON, not FHIR, not the shape expected."""


class ConfigError(LeukoError):
    """A configuration file or environment variable is invalid."""


class FhirServerError(LeukoError):
    """A FHIR server answered with an error or could not be reached.

    ``status`` is the HTTP status (``None`` when no response arrived);
    ``outcome`` is the OperationOutcome body when the server sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        outcome: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome


class TemporaryFhirServerError(FhirServerError):
    """Worth retrying later: network failure, timeout, 429, 5xx."""


class FatalFhirServerError(FhirServerError):
    """Retrying will not help: 4xx other than 408/429 (bad request, forbidden, not found, ...)."""


# --- FHIR server answers by meaning (as fhir-py's ResourceNotFound): callers catch the meaning,
# never compare ``status`` codes. Each is still Temporary or Fatal, so retry policy is unchanged.


class FhirNotFound(FatalFhirServerError):
    """404 Not Found or 410 Gone: the resource is not, or no longer, on the server."""


class FhirBadRequest(FatalFhirServerError):
    """400 Bad Request: the server could not read the request (a parameter it does not know)."""


class FhirUnauthorized(FatalFhirServerError):
    """401: our credentials were refused (token missing, expired or invalid)."""


class FhirForbidden(FatalFhirServerError):
    """403: authenticated, but the token lacks a scope or right for this request."""


class FhirNotSupported(FatalFhirServerError):
    """405 Method Not Allowed or 501 Not Implemented: the server does not offer this
    interaction (a transaction, ``_history``); another way may work, retrying will not."""


class FhirRateLimited(TemporaryFhirServerError):
    """429 Too Many Requests: slow down and try again later."""


#: The class a FHIR server's HTTP error status stands for (others: by 4xx/5xx family).
FHIR_STATUS_ERRORS: dict[int, type[FhirServerError]] = {
    400: FhirBadRequest,
    401: FhirUnauthorized,
    403: FhirForbidden,
    404: FhirNotFound,
    405: FhirNotSupported,
    410: FhirNotFound,
    429: FhirRateLimited,
    501: FhirNotSupported,
}


def fhir_error_for_status(
    status: int, message: str, outcome: dict[str, object] | None = None
) -> TemporaryFhirServerError | FatalFhirServerError:
    """The typed error for a non-2xx answer: by meaning where FHIR gives one, else Temporary
    for 408 and 5xx, Fatal for the other 4xx."""
    cls = FHIR_STATUS_ERRORS.get(status)
    if cls is None:
        cls = TemporaryFhirServerError if status == 408 or status >= 500 else FatalFhirServerError
    error = cls(message, status=status, outcome=outcome)
    assert isinstance(error, TemporaryFhirServerError | FatalFhirServerError)
    return error


class AuthError(LeukoError):
    """A caller failed authentication (bad JWT, wrong subscription secret)."""

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


class AuthError(LeukoError):
    """A caller failed authentication (bad JWT, wrong subscription secret)."""

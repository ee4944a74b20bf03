"""What ``check-server`` reports: a Check per capability, the Report, and its Options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from fhir_leuko.clinical.thresholds import DEFAULT_THRESHOLDS, Thresholds
from fhir_leuko.fhirio import codes
from fhir_leuko.fhirio.client import Auth

JSON = dict[str, Any]
Status = Literal["pass", "warn", "fail", "skip"]
PASS: Final = "pass"
WARN: Final = "warn"
FAIL: Final = "fail"
SKIP: Final = "skip"

#: ``meta.tag`` system on everything ``--write`` creates; the code names the run.
CHECK_TAG_SYSTEM: Final = f"{codes.BASE}/CodeSystem/check-server-run"
#: Identifier system of the conditional-create probe Patient.
PROBE_IDENTIFIER_SYSTEM: Final = f"{codes.BASE}/identifier/check-server-probe"
#: SMART scopes for ``--write`` (SMART v1 wildcard: it reads, writes and deletes every type).
WRITE_SCOPE: Final = "system/*.read system/*.write"
#: Above this, one query is slow for a CDS Hooks call (the CDS client waits a few seconds in all).
SLOW_QUERY_MS: Final = 2000.0


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Check:
    """One check's verdict, with the request that showed it and how long it took."""

    id: str
    title: str
    status: Status
    reason: str
    request: str = ""
    http_status: int | None = None
    ms: float | None = None
    required: bool = True
    group: str = "read"


@dataclass
class Report:
    base_url: str
    write: bool
    checks: list[Check] = field(default_factory=list)
    server: str = ""
    fhir_version: str = ""
    patient: str = ""
    run_tag: str = ""
    remaining: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check


@dataclass(frozen=True)
class Options:
    base_url: str
    auth: Auth = None
    patient: str | None = None
    write: bool = False
    samples_dir: Path | None = None
    timeout: float = 30.0
    thresholds: Thresholds = DEFAULT_THRESHOLDS


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"

"""The FHIR searches fhir-leuko runs, written once for every caller.

Why one module: the CDS Hooks prefetch templates, the CDS fallback fetch, the Subscription
worker and ``fhir-leuko fetch`` must read the same data for a patient, or the same patient
would be assessed differently depending on how the request arrived (CDS Hooks 2.0 "Prefetch
Template": prefetched data MUST equal what the service would get by running the template).
So each query is a template with the one CDS Hooks token every hook fills,
``{{context.patientId}}``; callers that know the id fill it in.

CDS Hooks 2.0 has no date tokens, so time windows are not in the query strings: they are
applied in code (:func:`within_window`) after the data arrives, and a ``-date`` sort lets a
reader stop paging once a whole page is older than the window (:func:`past_window`).

Also here: the searches that are not per patient (the Subscription criteria and the catch-up
search run when notifications were missed), so their code lists cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qsl, quote

from fhir_leuko.fhirio import codes
from fhir_leuko.fhirio.ingest import result_time

__all__ = [
    "CBC",
    "CONDITIONS",
    "MEDICATIONS",
    "OPEN_ORDERS",
    "PATIENT",
    "PATIENT_DATA",
    "PATIENT_TOKEN",
    "SUBSCRIBED_LOINC",
    "TEMPERATURES",
    "VITAMIN_LEVELS",
    "PatientQuery",
    "any_code",
    "changed_observations",
    "latest_risk_assessments",
    "past_window",
    "subscription_criteria",
    "within_window",
]

JSON = dict[str, Any]

#: The prefetch token we use: the only context field every hook we serve makes a token.
PATIENT_TOKEN = "{{context.patientId}}"


def any_code(system: str, values: Iterable[str]) -> str:
    """A token search value matching any of the codes: ``system|a,system|b``.

    Always with the system, so a local code with the same digits never matches.
    """
    return ",".join(f"{system}|{v}" for v in values)


@dataclass(frozen=True)
class PatientQuery:
    """One query about one patient: a read (``returns="Patient"``) or a search (``"Bundle"``).

    ``window``: only Observations whose effective time is this recent are used.
    """

    key: str
    template: str
    returns: Literal["Patient", "Bundle"]
    window: timedelta | None = None

    def fill(self, patient_id: str) -> str:
        """The relative FHIR URL for one patient (escaped, so an id cannot add parameters)."""
        return self.template.replace(PATIENT_TOKEN, quote(patient_id, safe=""))

    def search(self, patient_id: str) -> tuple[str, list[tuple[str, str]]]:
        """``(resource type, parameters)`` for a client's ``search`` (searches only)."""
        if self.returns != "Bundle":
            raise ValueError(f"{self.key} is a read, not a search")
        resource_type, _, query = self.fill(patient_id).partition("?")
        return resource_type, parse_qsl(query, keep_blank_values=True)


# Windows (clinical-rules.md): trends, stability and persistence look back 24 months (v2:
# "progressive decline: >= 3 draws within 24 months (the CDS prefetch and the FHIR queries
# therefore read 24 months of CBCs)"); fever counts in the 24 h before the index CBC or since;
# B12/folate are "recent" within 90 days.
CBC_WINDOW_MONTHS = 24
CBC_WINDOW = timedelta(days=731)  # 24 months, the longer of two calendar years (leap day)
TEMPERATURE_WINDOW = timedelta(hours=48)
B12_FOLATE_WINDOW = timedelta(days=90)

PATIENT = PatientQuery("patient", f"Patient/{PATIENT_TOKEN}", "Patient")
CBC = PatientQuery(
    "cbc",
    f"Observation?patient={PATIENT_TOKEN}&code={any_code(codes.LOINC, codes.CBC_LOINC)}"
    "&_sort=-date&_count=200",
    "Bundle",
    CBC_WINDOW,
)
#: The lab reports that list the CBC results: an Observation may carry no time of its own and
#: take it from its report (the FHIR specification's own CBC example; decision table 1.4), or
#: be contained in it. Not filtered by code: vendors name CBC panels with local codes.
LAB_REPORTS = PatientQuery(
    "labReports",
    f"DiagnosticReport?patient={PATIENT_TOKEN}&_sort=-date&_count=50",
    "Bundle",
    CBC_WINDOW,
)
TEMPERATURES = PatientQuery(
    "temperatures",
    f"Observation?patient={PATIENT_TOKEN}&code={any_code(codes.LOINC, codes.TEMPERATURE_LOINC)}"
    "&_sort=-date&_count=100",
    "Bundle",
    TEMPERATURE_WINDOW,
)
VITAMIN_LEVELS = PatientQuery(
    "vitaminLevels",
    f"Observation?patient={PATIENT_TOKEN}&code={any_code(codes.LOINC, codes.B12_FOLATE_LOINC)}"
    "&_sort=-date&_count=20",
    "Bundle",
    B12_FOLATE_WINDOW,
)
MEDICATIONS = PatientQuery(
    "medications", f"MedicationRequest?patient={PATIENT_TOKEN}&status=active&_count=100", "Bundle"
)
CONDITIONS = PatientQuery(
    "conditions",
    # recurrence and relapse are kinds of active in the condition-clinical hierarchy.
    f"Condition?patient={PATIENT_TOKEN}&clinical-status=active,recurrence,relapse&_count=100",
    "Bundle",
)
OPEN_ORDERS = PatientQuery(
    "openOrders", f"ServiceRequest?patient={PATIENT_TOKEN}&status=draft,active&_count=100", "Bundle"
)

#: Everything one evaluation reads, in the order the CDS service lists its prefetch keys.
PATIENT_DATA: tuple[PatientQuery, ...] = (
    PATIENT,
    CBC,
    LAB_REPORTS,
    TEMPERATURES,
    VITAMIN_LEVELS,
    MEDICATIONS,
    CONDITIONS,
    OPEN_ORDERS,
)


# --------------------------------------------------------------------------- time windows


def _date_prefix(value: object) -> str | None:
    """'YYYY-MM-DD' when a FHIR date/dateTime string starts with a well-formed date."""
    if (
        isinstance(value, str)
        and len(value) >= 10
        and value[4] == "-"
        and value[7] == "-"
        and value[:4].isdigit()
        and value[5:7].isdigit()
        and value[8:10].isdigit()
    ):
        return value[:10]
    return None


def within_window(resources: Sequence[JSON], query: PatientQuery, now: datetime) -> list[JSON]:
    """The query's resources inside its window; undated ones pass (ingest reports them).

    A result dated two days or more away from the cutoff is decided on its date alone (no time
    zone moves a time by more than a day); only those near the cutoff are parsed in full.
    """
    if query.window is None:
        return list(resources)
    cutoff = now - query.window
    surely_in = (cutoff + timedelta(days=2)).date().isoformat()
    surely_out = (cutoff - timedelta(days=2)).date().isoformat()
    kept: list[JSON] = []
    for r in resources:
        if r.get("resourceType") in ("Observation", "DiagnosticReport"):
            day = _date_prefix(r.get("effectiveDateTime") or r.get("effectiveInstant"))
            if day is not None and day >= surely_in:
                kept.append(r)
                continue
            if day is not None and day < surely_out:
                continue
            when = result_time(r)
            if when is not None and when < cutoff:
                continue
        kept.append(r)
    return kept


def past_window(page: Sequence[JSON], kept: Sequence[JSON], query: PatientQuery) -> bool:
    """True when a whole ``-date`` sorted page fell outside the window: later pages will too."""
    return query.window is not None and bool(page) and not kept


# --------------------------------------------------------------------------- not per patient

#: What our Subscriptions ask to be told about: the CBC codes (what a new blood count is made
#: of). Temperatures are not subscribed to: vital signs are charted hourly on a ward and would
#: trigger an evaluation each; they are read when a CBC arrives.
SUBSCRIBED_LOINC: tuple[str, ...] = codes.CBC_LOINC


def subscription_criteria(loinc: Sequence[str] = SUBSCRIBED_LOINC) -> str:
    """The R4 Subscription ``criteria`` (a search string), also the Backport filter."""
    return f"Observation?code={any_code(codes.LOINC, loinc)}"


def changed_observations(
    since: str, loinc: Sequence[str] = SUBSCRIBED_LOINC, page_size: int = 100
) -> list[tuple[str, str]]:
    """Catch-up search parameters: subscribed Observations changed at or after ``since``.

    ``ge``, not ``gt``: two results can share a ``lastUpdated`` instant, and a result seen
    twice is harmless (the queue drops a version it has seen), a result missed is not.
    """
    return [
        ("code", any_code(codes.LOINC, loinc)),
        ("_lastUpdated", f"ge{since}"),
        ("_sort", "_lastUpdated"),
        ("_count", str(page_size)),
    ]


def latest_risk_assessments(patient_id: str, count: int = 20) -> list[tuple[str, str]]:
    """RiskAssessments of a patient, newest first (``date`` is ``occurrence`` in R4)."""
    return [("subject", f"Patient/{patient_id}"), ("_sort", "-date"), ("_count", str(count))]

"""Our CDS services: discovery entries and the prefetch templates each one asks for.

A prefetch template is also the query of our own fallback fetch, so prefetched and fetched
data agree (spec "Prefetch Template": prefetched data MUST equal what the service would get
by running the template itself). Templates use only ``{{context.patientId}}``: a required
key must never depend on an optional context field, because clients drop templates with an
unfilled token (``docs/cds-hooks.md`` 7.1, 8). CDS Hooks 2.0 has no date tokens, so time
windows are applied in code after the data arrives. The query strings and windows live in
``fhir_leuko.fhirio.queries``, shared with the Subscription worker and the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from fhir_leuko.fhirio import queries
from fhir_leuko.fhirio.queries import PatientQuery


@dataclass(frozen=True)
class PrefetchQuery:
    """One prefetch key: the shared query (``fhirio.queries``) and how this service uses it.

    ``required``: without it there is nothing to assess, so the call fails with 412 when it
    can be neither prefetched nor fetched. An optional key that cannot be had is reported on
    the card (and in the RiskAssessment) as data that was not checked; ``describes`` says
    what, in words for a clinician.
    """

    query: PatientQuery
    describes: str
    required: bool = False

    @property
    def key(self) -> str:
        return self.query.key

    @property
    def template(self) -> str:
        return self.query.template

    @property
    def returns(self) -> str:
        return self.query.returns

    @property
    def window(self) -> timedelta | None:
        return self.query.window


@dataclass(frozen=True)
class ServiceDefinition:
    id: str
    hook: str
    title: str
    description: str
    usage_requirements: str
    prefetch: tuple[PrefetchQuery, ...]

    def discovery_entry(self) -> dict[str, object]:
        """The service's entry in ``GET /cds-services``."""
        return {
            "hook": self.hook,
            "title": self.title,
            "description": self.description,
            "id": self.id,
            "prefetch": {q.key: q.template for q in self.prefetch},
            "usageRequirements": self.usage_requirements,
        }


PATIENT = PrefetchQuery(
    queries.PATIENT, "the patient's age and sex (adult limits were used)", required=True
)
CBC = PrefetchQuery(queries.CBC, "CBC results", required=True)
LAB_REPORTS = PrefetchQuery(
    queries.LAB_REPORTS, "lab reports (CBC results timed only by their report were not read)"
)
TEMPERATURES = PrefetchQuery(queries.TEMPERATURES, "body temperatures (fever was not assessed)")
VITAMIN_LEVELS = PrefetchQuery(
    queries.VITAMIN_LEVELS,
    "recent vitamin B12 and folate results (they may be proposed although recently done)",
)
MEDICATIONS = PrefetchQuery(
    queries.MEDICATIONS, "active medications (drugs that lower white cells were not checked)"
)
CONDITIONS = PrefetchQuery(
    queries.CONDITIONS, "active conditions (explaining conditions were not checked)"
)
OPEN_ORDERS = PrefetchQuery(
    queries.OPEN_ORDERS, "open orders (a suggested order may already exist)"
)

PATIENT_VIEW = ServiceDefinition(
    id="leukopenia-patient-view",
    hook="patient-view",
    title="Leukopenia and neutropenia check",
    description=(
        "Reads the CBC results of the last 24 months, recent temperatures, active medications, "
        "conditions and open orders; when the white count or neutrophils are low it grades the "
        "problem, explains it, and offers the orders to create (repeat CBC, smear, B12 and "
        "folate, haematology referral, urgent evaluation)."
    ),
    usage_requirements=(
        "Needs the Patient and the CBC Observations, by prefetch or by FHIR read access to "
        "fhirServer (Patient, Observation, DiagnosticReport, MedicationRequest, Condition, "
        "ServiceRequest)."
    ),
    prefetch=(
        PATIENT,
        CBC,
        LAB_REPORTS,
        TEMPERATURES,
        VITAMIN_LEVELS,
        MEDICATIONS,
        CONDITIONS,
        OPEN_ORDERS,
    ),
)

MEDICATION_CHECK = ServiceDefinition(
    id="leukopenia-medication-check",
    hook="order-select",
    title="Neutropenia check for drugs that lower white cells",
    description=(
        "When a drug known to lower white cells (e.g. clozapine, methotrexate, carbamazepine, "
        "chemotherapy) is selected while the latest CBC shows neutropenia, warns with the counts."
    ),
    usage_requirements=(
        "Needs the Patient and the CBC Observations, by prefetch or by FHIR read access to "
        "fhirServer (Patient, Observation, DiagnosticReport)."
    ),
    prefetch=(PATIENT, CBC, LAB_REPORTS, TEMPERATURES),
)

SERVICES: Mapping[str, ServiceDefinition] = {s.id: s for s in (PATIENT_VIEW, MEDICATION_CHECK)}


def discovery() -> dict[str, object]:
    """The body of ``GET /cds-services``."""
    return {"services": [s.discovery_entry() for s in SERVICES.values()]}

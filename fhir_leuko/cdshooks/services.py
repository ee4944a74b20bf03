"""Our CDS services: discovery entries and the prefetch templates each one asks for.

A prefetch template is also the query of our own fallback fetch, so prefetched and fetched
data agree (spec "Prefetch Template": prefetched data MUST equal what the service would get
by running the template itself). Templates use only ``{{context.patientId}}``: a required
key must never depend on an optional context field, because clients drop templates with an
unfilled token (``docs/cds-hooks.md`` 7.1, 8). CDS Hooks 2.0 has no date tokens, so time
windows are applied in code (:attr:`PrefetchQuery.window`) after the data arrives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote

from fhir_leuko.fhirio import codes

#: Prefetch tokens we use; the only context field every hook we serve makes a token.
PATIENT_TOKEN = "{{context.patientId}}"


@dataclass(frozen=True)
class PrefetchQuery:
    """One prefetch key: its template, what it must return, and how we use it.

    ``required``: without it there is nothing to assess, so the call fails with 412 when it
    can be neither prefetched nor fetched. An optional key that cannot be had is reported on
    the card (and in the RiskAssessment) as data that was not checked.
    ``window``: keep only Observations whose effective time is this recent.
    """

    key: str
    template: str
    returns: str  # "Patient" for a read, "Bundle" for a search
    describes: str  # for people: what was unavailable when this key is missing
    required: bool = False
    window: timedelta | None = None

    def fill(self, patient_id: str) -> str:
        """The relative FHIR URL for one patient (the id is already a checked FHIR id)."""
        return self.template.replace(PATIENT_TOKEN, quote(patient_id, safe=""))


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


def _codes(loinc: tuple[str, ...]) -> str:
    """Token search on system|code, so a local code with the same digits never matches."""
    return ",".join(f"{codes.LOINC}|{c}" for c in loinc)


CBC_WINDOW = timedelta(days=365)  # trends, stability and persistence look back months
TEMPERATURE_WINDOW = timedelta(hours=48)  # fever counts in the 24 h before the index CBC or since
B12_FOLATE_WINDOW = timedelta(days=90)  # "recently normal" (clinical-rules.md section 2)

PATIENT = PrefetchQuery(
    "patient",
    f"Patient/{PATIENT_TOKEN}",
    returns="Patient",
    describes="the patient's age and sex (adult limits were used)",
    required=True,
)
CBC = PrefetchQuery(
    "cbc",
    f"Observation?patient={PATIENT_TOKEN}&code={_codes(codes.CBC_LOINC)}&_sort=-date&_count=200",
    returns="Bundle",
    describes="CBC results",
    required=True,
    window=CBC_WINDOW,
)
TEMPERATURES = PrefetchQuery(
    "temperatures",
    f"Observation?patient={PATIENT_TOKEN}&code={_codes(codes.TEMPERATURE_LOINC)}"
    "&_sort=-date&_count=100",
    returns="Bundle",
    describes="body temperatures (fever was not assessed)",
    window=TEMPERATURE_WINDOW,
)
VITAMIN_LEVELS = PrefetchQuery(
    "vitaminLevels",
    f"Observation?patient={PATIENT_TOKEN}&code={_codes(codes.B12_FOLATE_LOINC)}"
    "&_sort=-date&_count=20",
    returns="Bundle",
    describes="recent vitamin B12 and folate results (they may be proposed although recently done)",
    window=B12_FOLATE_WINDOW,
)
MEDICATIONS = PrefetchQuery(
    "medications",
    f"MedicationRequest?patient={PATIENT_TOKEN}&status=active&_count=100",
    returns="Bundle",
    describes="active medications (drugs that lower white cells were not checked)",
)
CONDITIONS = PrefetchQuery(
    "conditions",
    # recurrence and relapse are kinds of active in the condition-clinical hierarchy.
    f"Condition?patient={PATIENT_TOKEN}&clinical-status=active,recurrence,relapse&_count=100",
    returns="Bundle",
    describes="active conditions (explaining conditions were not checked)",
)
OPEN_ORDERS = PrefetchQuery(
    "openOrders",
    f"ServiceRequest?patient={PATIENT_TOKEN}&status=draft,active&_count=100",
    returns="Bundle",
    describes="open orders (a suggested order may already exist)",
)

PATIENT_VIEW = ServiceDefinition(
    id="leukopenia-patient-view",
    hook="patient-view",
    title="Leukopenia and neutropenia check",
    description=(
        "Reads the CBC results of the last 12 months, recent temperatures, active medications, "
        "conditions and open orders; when the white count or neutrophils are low it grades the "
        "problem, explains it, and offers the orders to create (repeat CBC, smear, B12 and "
        "folate, haematology referral, urgent evaluation)."
    ),
    usage_requirements=(
        "Needs the Patient and the CBC Observations, by prefetch or by FHIR read access to "
        "fhirServer (Patient, Observation, MedicationRequest, Condition, ServiceRequest)."
    ),
    prefetch=(PATIENT, CBC, TEMPERATURES, VITAMIN_LEVELS, MEDICATIONS, CONDITIONS, OPEN_ORDERS),
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
        "fhirServer (Patient, Observation)."
    ),
    prefetch=(PATIENT, CBC, TEMPERATURES),
)

SERVICES: Mapping[str, ServiceDefinition] = {s.id: s for s in (PATIENT_VIEW, MEDICATION_CHECK)}


def discovery() -> dict[str, object]:
    """The body of ``GET /cds-services``."""
    return {"services": [s.discovery_entry() for s in SERVICES.values()]}

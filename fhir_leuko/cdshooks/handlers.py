"""The CDS services this adapter offers: each is its definition plus its handler.

As the CDS Hooks reference services and HAPI's ``registerService`` do, a service is
registered once with :func:`service`, pairing its :class:`ServiceDefinition` (discovery and
prefetch, ``cdshooks.services``) with the coroutine that answers its hook. The router looks a
call's service up in :data:`REGISTRY` and awaits its handler; it knows no service by name.

A handler gets a :class:`HookCall`: the parsed request, the evaluation time and thresholds,
and the way to gather the patient's data (prefetch, else our own fetch). It parses its hook's
context, gathers, runs the one evaluation (``fhir_leuko.service.evaluate``) and builds cards.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

from fhir_leuko.cdshooks import models as m
from fhir_leuko.cdshooks.cards import (
    CardLinks,
    SelectedDrug,
    medication_check_response,
    patient_view_response,
)
from fhir_leuko.cdshooks.fetch import Gathered
from fhir_leuko.cdshooks.services import MEDICATION_CHECK, PATIENT_VIEW, SERVICES, ServiceDefinition
from fhir_leuko.clinical.model import Assessment
from fhir_leuko.clinical.thresholds import Thresholds
from fhir_leuko.errors import InputError
from fhir_leuko.fhirio.ingest import match_medication, medication_concept
from fhir_leuko.service import evaluate

JSON = dict[str, Any]

__all__ = ["REGISTRY", "CdsService", "Handler", "HookCall", "service"]

#: A hook's context: each names its patient.
Context = TypeVar("Context", m.PatientViewContext, m.OrderSelectContext)


@dataclass(frozen=True)
class HookCall:
    """One hook invocation, as a handler sees it."""

    definition: ServiceDefinition
    request: m.HookRequest
    now: datetime
    thresholds: Thresholds
    #: Where cards point (the decision table page, the trend app) on this service.
    links: CardLinks
    #: The patient's data for this service's prefetch keys: prefetched, else fetched.
    gather: Callable[[str], Awaitable[Gathered]]

    def context(self, model: type[Context]) -> Context:
        """The hook's context, parsed; a token bound to another patient is refused."""
        ctx = m.parse_model(model, self.request.context, prefix="context")
        bound = self.request.fhirAuthorization.patient if self.request.fhirAuthorization else None
        if bound is not None and bound != ctx.patientId:
            raise InputError("fhirAuthorization.patient is not the patient of context.patientId")
        return ctx

    def assess(
        self, gathered: Gathered, patient_id: str, extra: tuple[JSON, ...] = ()
    ) -> Assessment:
        """The one evaluation, with the data we could not get listed among its data issues."""
        a = evaluate(
            gathered.resources + list(extra) if extra else gathered.resources,
            now=self.now,
            thresholds=self.thresholds,
            patient_id=patient_id,
            fhir_base=self.request.fhirServer,
        )
        return replace(a, issues=a.issues + tuple(gathered.issues)) if gathered.issues else a


Handler = Callable[[HookCall], Awaitable[m.CdsResponse]]


@dataclass(frozen=True)
class CdsService:
    """One CDS service: what discovery says of it, and the coroutine answering its hook."""

    definition: ServiceDefinition
    handle: Handler


REGISTRY: dict[str, CdsService] = {}


def service(definition: ServiceDefinition) -> Callable[[Handler], Handler]:
    """Register ``handler`` as the one answering ``definition``'s hook."""

    def register(handler: Handler) -> Handler:
        if definition.id in REGISTRY:
            raise ValueError(f"CDS service {definition.id!r} is registered twice")
        REGISTRY[definition.id] = CdsService(definition, handler)
        return handler

    return register


# --- The services --------------------------------------------------------------------------------


@service(PATIENT_VIEW)
async def patient_view(call: HookCall) -> m.CdsResponse:
    """Grade low counts, explain them and propose the orders."""
    ctx = call.context(m.PatientViewContext)
    a = call.assess(await call.gather(ctx.patientId), ctx.patientId)
    return patient_view_response(a, service_id=call.definition.id, links=call.links)


@service(MEDICATION_CHECK)
async def medication_check(call: HookCall) -> m.CdsResponse:
    """Warn when a selected drug that lowers white cells meets neutropenia."""
    ctx = call.context(m.OrderSelectContext)
    drugs, active = selected_drugs(ctx)
    if not drugs:
        return m.CdsResponse(cards=[])
    a = call.assess(await call.gather(ctx.patientId), ctx.patientId, tuple(active))
    return medication_check_response(a, drugs, service_id=call.definition.id, links=call.links)


def selected_drugs(ctx: m.OrderSelectContext) -> tuple[list[SelectedDrug], list[JSON]]:
    """Selected draft orders for drugs that lower white cells, and copies counted as active.

    The copies let the one evaluation weigh the drug as if it were already taken (decision
    rows 4 and 7 look at high-risk medications): no rule is restated here.
    """
    by_ref = {
        f"{r.get('resourceType')}/{r.get('id')}": r
        for e in ctx.draftOrders.entry
        if isinstance(r := e.get("resource"), dict)
    }
    drugs: list[SelectedDrug] = []
    active: list[JSON] = []
    for ref in ctx.selections:
        order = by_ref[ref]
        if order.get("resourceType") not in ("MedicationRequest", "MedicationOrder"):
            continue
        concept = medication_concept(order)
        match = match_medication(concept) if concept else None
        if match is None:
            continue
        drugs.append(SelectedDrug(ref, *match))
        active.append(
            {
                "resourceType": "MedicationRequest",
                "id": order.get("id"),
                "status": "active",
                "intent": "order",
                "subject": {"reference": f"Patient/{ctx.patientId}"},
                "medicationCodeableConcept": concept,
            }
        )
    return drugs, active


def _check_complete(registry: Mapping[str, CdsService]) -> None:
    """Every service offered in discovery answers its hook, and only those are served."""
    if registry.keys() != SERVICES.keys():
        raise RuntimeError("the CDS service registry does not match the service definitions")


_check_complete(REGISTRY)

"""Each CDS service is its definition plus its handler, registered once."""

from __future__ import annotations

import inspect

import pytest

from fhir_leuko.cdshooks import handlers
from fhir_leuko.cdshooks import models as m
from fhir_leuko.cdshooks.services import PATIENT_VIEW, SERVICES, discovery


def test_every_discovered_service_has_exactly_one_handler() -> None:
    offered = [str(s.discovery_entry()["id"]) for s in SERVICES.values()]
    assert discovery() == {"services": [s.discovery_entry() for s in SERVICES.values()]}
    assert sorted(handlers.REGISTRY) == sorted(offered) == sorted(SERVICES)
    for sid, service in handlers.REGISTRY.items():
        assert service.definition is SERVICES[sid]
        assert inspect.iscoroutinefunction(service.handle)


def test_a_service_cannot_be_registered_twice() -> None:
    before = dict(handlers.REGISTRY)

    async def other(call: handlers.HookCall) -> m.CdsResponse:
        return m.CdsResponse(cards=[])

    with pytest.raises(ValueError, match="registered twice"):
        handlers.service(PATIENT_VIEW)(other)
    assert before == handlers.REGISTRY
    assert handlers.REGISTRY[PATIENT_VIEW.id].handle is handlers.patient_view

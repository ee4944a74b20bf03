"""The FHIR queries and CDS prefetch read 24 months of CBCs (clinical-rules.md v2, trend window)."""

from __future__ import annotations

from datetime import timedelta

from fhir_leuko.cdshooks import services
from fhir_leuko.fhirio import queries
from tests.builders import NOW, WBC, at, obs


def test_the_cbc_window_is_24_months() -> None:
    # 24 calendar months are 730 or 731 days; never the former 365.
    assert timedelta(days=730) <= queries.CBC_WINDOW <= timedelta(days=731)
    assert services.CBC.window == queries.CBC_WINDOW


def test_a_draw_20_months_old_is_read_and_one_25_months_old_is_not() -> None:
    recent, old = obs(WBC, 3.0, at(days_before=610)), obs(WBC, 3.0, at(days_before=762))
    kept = queries.within_window([recent, old], queries.CBC, NOW)
    assert kept == [recent]


def test_the_services_say_24_months_where_they_describe_the_window() -> None:
    described = services.discovery()["services"]
    assert isinstance(described, list)
    pv = next(s for s in described if s["id"] == "leukopenia-patient-view")
    assert "24 months" in pv["description"] and "12 months" not in pv["description"]

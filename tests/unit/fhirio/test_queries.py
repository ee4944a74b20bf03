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


# --- within_window's date-only shortcut equals parsing every time -----------------------------

from datetime import UTC as _UTC  # noqa: E402
from datetime import datetime as _dt  # noqa: E402
from datetime import timedelta as _td  # noqa: E402
from datetime import timezone as _tz  # noqa: E402

from hypothesis import given as _given  # noqa: E402
from hypothesis import settings as _settings  # noqa: E402
from hypothesis import strategies as _st  # noqa: E402

from fhir_leuko.fhirio import queries as _q  # noqa: E402
from fhir_leuko.fhirio.ingest import parse_time as _parse  # noqa: E402


@_settings(max_examples=300, deadline=None)
@_given(
    _st.lists(
        _st.tuples(
            _st.integers(-6 * 24 * 60, 6 * 24 * 60),  # minutes around the cutoff
            _st.sampled_from([0, 330, -420, 840, -720]),  # the stamp's UTC offset, minutes
        ),
        max_size=12,
    )
)
def test_window_shortcut_agrees_with_parsing(stamps: list[tuple[int, int]]) -> None:
    now = _dt(2026, 3, 10, 12, 0, tzinfo=_UTC)
    cutoff = now - _q.CBC.window  # type: ignore[operator]
    resources = [
        {
            "resourceType": "Observation",
            "id": str(i),
            "effectiveDateTime": (cutoff + _td(minutes=m))
            .astimezone(_tz(_td(minutes=off)))
            .isoformat(),
        }
        for i, (m, off) in enumerate(stamps)
    ]
    kept = {r["id"] for r in _q.within_window(resources, _q.CBC, now)}
    parsed = {r["id"] for r in resources if _parse(r["effectiveDateTime"]) >= cutoff}  # type: ignore[operator]
    assert kept == parsed

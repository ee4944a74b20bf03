"""One instant, whatever offset the clock reads it at: the same findings, windows and cards.

The tests' frozen clock (``tests.builders.NOW``) is at +05:30; here every sample is also
evaluated with that instant read at UTC, -07:00 and +14:00 (where it is already the next
calendar day), and everything emitted must be identical: a rule or a card window that compared
wall-clock fields or dates of the local clock instead of instants would differ.
"""

from __future__ import annotations

from datetime import UTC, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from fhir_leuko.cdshooks.cards import CardLinks, patient_view_response
from fhir_leuko.fhirio import emit
from fhir_leuko.render import text_report
from fhir_leuko.service import evaluate
from tests.builders import NOW, NOW_UTC, TEMP, at, bundle, cbc, obs, patient

SAMPLES = sorted(
    p
    for p in (Path(__file__).parents[2] / "samples").glob("[0-9][0-9]-*.json")
    if not p.name.endswith(".expected.json")
)
LINKS = CardLinks("http://r", {})
OFFSETS = [timezone(timedelta(hours=-7)), timezone(timedelta(hours=14)), NOW.tzinfo]


def outputs(data: bytes, offset: timezone | None) -> tuple[object, ...]:
    now = NOW_UTC if offset is None else NOW_UTC.astimezone(offset)
    a = evaluate(data, now=now)
    cards = patient_view_response(a, service_id="leukopenia-patient-view", links=LINKS)
    return emit.bundle(a), text_report(a), cards.model_dump(mode="json")


def test_the_frozen_clock_is_the_sample_instant_at_a_non_utc_offset() -> None:
    assert NOW.utcoffset() == timedelta(hours=5, minutes=30)
    assert NOW_UTC == NOW and NOW_UTC.tzinfo is UTC
    assert NOW_UTC.isoformat() == "2026-03-10T12:00:00+00:00"
    assert at().endswith("+05:30")


@pytest.mark.parametrize("offset", OFFSETS, ids=["-07:00", "+14:00", "+05:30"])
@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_every_sample_reads_the_same_at_any_offset(sample: Path, offset: timezone) -> None:
    data = sample.read_bytes()
    assert outputs(data, offset) == outputs(data, None)


@pytest.mark.parametrize("offset", OFFSETS, ids=["-07:00", "+14:00", "+05:30"])
def test_card_windows_and_times_do_not_move_with_the_offset(offset: timezone) -> None:
    data = orjson.dumps(bundle(patient(), cbc(1.2, 0.4), obs(TEMP, 38.6, at())))
    bundle_utc, report_utc, cards_utc = outputs(data, None)
    assert outputs(data, offset) == (bundle_utc, report_utc, cards_utc)
    # The windows are written in UTC: the index CBC's date, never the local one of +14:00.
    assert "2026-03-10" in report_utc and "2026-03-11 " not in str(cards_utc)

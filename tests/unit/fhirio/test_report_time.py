"""Time and draw from the DiagnosticReport; references by fullUrl (clinical-rules.md 1.4 v2).

Expectations are written from the rules: an Observation without an effective time takes the
time of the DiagnosticReport that lists it in ``result``; references inside a Bundle resolve
by ``fullUrl`` (``urn:uuid:`` in transaction Bundles, absolute URLs) and by ``#id`` for
contained resources; two panels drawn in the same minute stay two draws.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from fhir_leuko.clinical.model import Analyte, NeutropeniaGrade, Risk
from fhir_leuko.fhirio.ingest import ingest
from fhir_leuko.service import evaluate
from tests.builders import ANC, HB, NEUT_PCT, NOW, PLT, WBC, at, bundle, obs, patient

LOINC = "http://loinc.org"
REPORT_TIME = "2026-03-10T08:30:00+11:00"  # the FHIR example's time, moved near NOW


def untimed(code: str, value: float, unit: str = "10*9/L", **extra: Any) -> dict[str, Any]:
    o = obs(code, value, unit=unit, **extra)
    del o["effectiveDateTime"]
    return o


def report(rid: str, results: list[str], when: str | None = REPORT_TIME, **extra: Any) -> Any:
    r: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "58410-2"}], "text": "CBC"},
        "subject": {"reference": "Patient/p1"},
        "result": [{"reference": ref} for ref in results],
        **extra,
    }
    if when is not None:
        r["effectiveDateTime"] = when
    return r


def spec_cbc_example() -> dict[str, Any]:
    """The shape of the FHIR specification's CBC example (DiagnosticReport 101): Observations
    contained in the report, referenced as '#r..', timed only by the report."""
    contained = []
    for rid, code, value, unit in (
        ("r1", HB, 176, "g/L"),
        ("r3", "4544-3", 55, "%"),  # haematocrit: not read
        ("r6", PLT, 444, "10*9/L"),
        ("r7", WBC, 4.6, "10*9/L"),
        ("r8", NEUT_PCT, 20, "%"),
        ("r9", ANC, 0.9, "10*9/L"),
    ):
        o = untimed(code, value, unit=unit, oid=rid)
        o["valueQuantity"]["unit"] = "x" + unit if unit.startswith("10") else unit
        contained.append(o)
    dr = report("101", [f"#{c['id']}" for c in contained], contained=contained)
    dr["issued"] = "2026-03-10T11:45:33+11:00"
    return dr


def test_the_fhir_specification_cbc_example_is_read_with_the_report_time() -> None:
    labs = ingest(bundle(patient(), spec_cbc_example()), patient_id="p1")
    anc = [r for r in labs.results if r.analyte is Analyte.ANC]
    assert [r.value for r in anc] == [0.9]
    assert anc[0].time == datetime.fromisoformat(REPORT_TIME)
    assert anc[0].draw_id == "DiagnosticReport/101"
    assert anc[0].ref == "DiagnosticReport/101#r9"
    assert {r.analyte for r in labs.results} == {
        Analyte.HAEMOGLOBIN,
        Analyte.PLATELETS,
        Analyte.WBC,
        Analyte.NEUTROPHIL_PERCENT,
        Analyte.ANC,
    }
    assert "no-effective-time" not in {i.code for i in labs.issues}


def test_the_fhir_specification_cbc_example_is_moderate_neutropenia_not_normal() -> None:
    # ANC 0.9: 0.5 <= ANC < 1.0 is moderate neutropenia (clinical-rules.md section 2).
    a = evaluate(bundle(patient(), spec_cbc_example()), now=NOW)
    assert a.grade is NeutropeniaGrade.MODERATE
    assert a.risk is not Risk.NEGLIGIBLE


def transaction(*entries: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": full,
                "resource": res,
                "request": {"method": "POST", "url": res["resourceType"]},
            }
            for full, res in entries
        ],
    }


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def test_urn_uuid_references_in_a_transaction_bundle_resolve_by_full_url() -> None:
    # Synthea's shape: ids are the uuids, references are the fullUrls.
    pid = str(uuid.uuid4())
    p_url = f"urn:uuid:{pid}"
    pat = dict(patient(pid=pid))
    w_url, a_url = urn(), urn()
    wbc = untimed(WBC, 1.8, oid=w_url[9:], subject={"reference": p_url})
    anc = untimed(ANC, 0.4, oid=a_url[9:], subject={"reference": p_url})
    dr = report(str(uuid.uuid4()), [w_url, a_url], subject={"reference": p_url})
    labs = ingest(transaction((p_url, pat), (w_url, wbc), (a_url, anc), (urn(), dr)))
    assert labs.patient_id == pid
    assert sorted(r.value for r in labs.results) == [0.4, 1.8]
    assert {r.draw_id for r in labs.results} == {f"DiagnosticReport/{dr['id']}"}
    assert {r.time for r in labs.results} == {datetime.fromisoformat(REPORT_TIME)}


def test_urn_uuid_references_to_resources_without_ids() -> None:
    w_url = urn()
    wbc = untimed(WBC, 2.2)
    del wbc["id"]
    labs = ingest(transaction((urn(), patient()), (w_url, wbc), (urn(), report("r1", [w_url]))))
    assert [(r.value, r.ref, r.draw_id) for r in labs.results] == [
        (2.2, w_url, "DiagnosticReport/r1")
    ]


def test_two_panels_drawn_in_the_same_minute_stay_two_draws() -> None:
    when = at()
    first = [obs(WBC, 3.1, when, oid="w1"), obs(ANC, 1.4, when, oid="a1")]
    second = [obs(WBC, 3.3, when, oid="w2"), obs(ANC, 1.6, when, oid="a2")]
    labs = ingest(
        bundle(
            patient(),
            first,
            second,
            report("panel-1", ["Observation/w1", "Observation/a1"], when=when),
            report("panel-2", ["Observation/w2", "Observation/a2"], when=when),
        )
    )
    draw_of = {r.ref: r.draw_id for r in labs.results}
    assert draw_of == {
        "Observation/w1": "DiagnosticReport/panel-1",
        "Observation/a1": "DiagnosticReport/panel-1",
        "Observation/w2": "DiagnosticReport/panel-2",
        "Observation/a2": "DiagnosticReport/panel-2",
    }


def test_two_panels_drawn_in_the_same_minute_are_two_draws_for_the_rules() -> None:
    when = at()
    a = evaluate(
        bundle(
            patient(),
            obs(WBC, 3.1, when, oid="w1"),
            obs(ANC, 1.4, when, oid="a1"),
            obs(WBC, 3.3, when, oid="w2"),
            obs(ANC, 1.6, when, oid="a2"),
            report("panel-1", ["Observation/w1", "Observation/a1"], when=when),
            report("panel-2", ["Observation/w2", "Observation/a2"], when=when),
        ),
        now=NOW,
    )
    assert len(a.draws) == 2


def test_absolute_result_references_resolve() -> None:
    o = untimed(WBC, 2.6, oid="abs1")
    dr = report("r2", ["https://fhir.example.org/r4/Observation/abs1/_history/3"])
    labs = ingest(bundle(patient(), o, dr))
    assert [(r.value, r.draw_id) for r in labs.results] == [(2.6, "DiagnosticReport/r2")]
    assert {i.code for i in labs.issues} == {"time-from-report"}


def test_an_observation_keeps_its_own_time_and_joins_the_report_draw() -> None:
    own = at(hours_before=1)
    o = obs(WBC, 2.6, own, oid="t1")
    labs = ingest(bundle(patient(), o, report("r3", ["Observation/t1"])))
    (r,) = labs.results
    assert r.draw_id == "DiagnosticReport/r3"
    assert r.time.isoformat().startswith(own[:19])


def test_no_time_anywhere_is_reported_with_the_value_as_sent() -> None:
    labs = ingest(bundle(patient(), untimed(ANC, 0.3, oid="lost")))
    assert labs.results == ()
    (issue,) = [i for i in labs.issues if i.code == "no-effective-time"]
    assert issue.analyte is Analyte.ANC and issue.sent == "0.3 10*9/L"
    assert "Observation/lost" in issue.message and "0.3" in issue.message


def test_the_issued_time_is_the_last_resort() -> None:
    o = untimed(WBC, 2.6)
    o["issued"] = at()
    labs = ingest(bundle(patient(), o))
    assert [r.value for r in labs.results] == [2.6]
    assert "no-effective-time" in {i.code for i in labs.issues}


def test_a_contained_result_without_any_time_is_reported_once() -> None:
    dr = spec_cbc_example()
    del dr["effectiveDateTime"]
    labs = ingest(bundle(patient(), dr), patient_id="p1")
    assert labs.results == ()
    missing = [i for i in labs.issues if i.code == "no-effective-time"]
    assert len(missing) == 5  # the five CBC results we read; nothing about other analytes
    anc = next(i for i in missing if i.analyte is Analyte.ANC)
    assert anc.ref == "DiagnosticReport/101#r9" and anc.sent == "0.9 x10*9/L"


def grouper(gid: str, members: list[str], when: str | None = REPORT_TIME, **extra: Any) -> Any:
    """A CBC panel sent as an Observation that lists its members in ``hasMember``."""
    g = report(gid, members, when=when, **extra)
    g["resourceType"] = "Observation"
    g["hasMember"] = g.pop("result")
    return g


def test_members_of_a_panel_observation_take_its_time_and_its_draw() -> None:
    members = [untimed(WBC, 2.6, oid="g-w"), untimed(ANC, 0.7, oid="g-a")]
    labs = ingest(
        bundle(patient(), members, grouper("panel", ["Observation/g-w", "Observation/g-a"]))
    )
    assert sorted((r.value, r.draw_id) for r in labs.results) == [
        (0.7, "Observation/panel"),
        (2.6, "Observation/panel"),
    ]
    assert {r.time for r in labs.results} == {datetime.fromisoformat(REPORT_TIME)}
    assert "time-from-report" in {i.code for i in labs.issues}


@pytest.mark.parametrize("panel", [report, grouper], ids=["DiagnosticReport", "hasMember"])
def test_a_panel_entered_in_error_gives_no_time(panel: Callable[..., Any]) -> None:
    voided = panel("bad", ["Observation/e1"], status="entered-in-error")
    labs = ingest(bundle(patient(), untimed(ANC, 0.3, oid="e1"), voided))
    assert labs.results == ()
    assert "no-effective-time" in {i.code for i in labs.issues}

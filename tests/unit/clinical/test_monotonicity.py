"""Property: lowering any count never lowers the risk or removes an urgent suggestion."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_leuko.clinical.model import Assessment, Priority
from fhir_leuko.service import evaluate
from tests.builders import NOW, TEMP, at, bundle, cbc, med, obs, patient

URGENT = {Priority.URGENT, Priority.ASAP, Priority.STAT}


def urgent_suggestions(a: Assessment) -> bool:
    return any(r.priority in URGENT for r in a.recommendations)


def top_priority(a: Assessment) -> int:
    return max((r.priority.rank for r in a.recommendations), default=-1)


counts = st.fixed_dictionaries(
    {
        "wbc": st.floats(0.05, 12.0),
        "anc_fraction": st.one_of(st.none(), st.floats(0.0, 0.9)),
        "hb": st.one_of(st.none(), st.floats(6.0, 17.0)),
        "plt": st.one_of(st.none(), st.floats(10.0, 400.0)),
        "mcv": st.one_of(st.none(), st.floats(70.0, 115.0)),
        "fever": st.sampled_from([None, 37.2, 38.1, 38.6]),
        "med": st.sampled_from([None, ("clozapine", "2626"), ("methotrexate", "6851")]),
        "birth": st.sampled_from(["1960-04-02", "2019-06-01", "2025-12-01"]),
        "sex": st.sampled_from(["male", "female", "unknown"]),
    }
)


def assess(
    c: dict, wbc: float, anc: float | None, hb: float | None, plt: float | None
) -> Assessment:  # type: ignore[type-arg]
    items: list[object] = [
        patient(birth=c["birth"], gender=c["sex"]),
        cbc(round(wbc, 2), None if anc is None else round(anc, 2), hb=hb, plt=plt, mcv=c["mcv"]),
    ]
    if c["fever"] is not None:
        items.append(obs(TEMP, c["fever"], at(hours_before=1)))
    if c["med"] is not None:
        items.append(med(*c["med"]))
    return evaluate(bundle(*items), now=NOW)


@settings(max_examples=300, deadline=None)
@given(counts, st.sampled_from(["wbc", "anc", "hb", "plt"]), st.floats(0.05, 0.95))
def test_lowering_a_count_never_lowers_risk(c: dict, which: str, factor: float) -> None:  # type: ignore[type-arg]
    wbc = c["wbc"]
    anc = None if c["anc_fraction"] is None else wbc * c["anc_fraction"]
    hb, plt = c["hb"], c["plt"]
    before = assess(c, wbc, anc, hb, plt)
    if which == "wbc":
        wbc *= factor
        if anc is not None:
            anc = min(anc, wbc)  # an ANC above the WBC is impossible; keep the draw coherent
    elif which == "anc" and anc is not None:
        anc *= factor
    elif which == "hb" and hb is not None:
        hb *= factor
    elif which == "plt" and plt is not None:
        plt *= factor
    after = assess(c, wbc, anc, hb, plt)
    assert after.risk.rank >= before.risk.rank, (before.headline, after.headline)
    if urgent_suggestions(before):
        assert urgent_suggestions(after), (before.headline, after.headline)
        assert top_priority(after) >= top_priority(before)


# --- Adding fever or a red-flag condition never lowers the risk (v2, section 3a) ---------------

from datetime import date, timedelta  # noqa: E402

from fhir_leuko.clinical.model import (  # noqa: E402
    Analyte,
    ClinicalCondition,
    Medication,
    PatientLabs,
    Result,
)
from fhir_leuko.clinical.rules import assess as assess_labs  # noqa: E402

_DRAW_TIME = NOW - timedelta(hours=2)
_CONDITIONS = {
    "duffy": ClinicalCondition("duffy-null", "Duffy null phenotype", "Condition/d", "test"),
    "chemo": ClinicalCondition("chemotherapy", "On chemotherapy", "Condition/ch", "test"),
    "viral": ClinicalCondition("viral-infection", "Viral URI", "Condition/v", "test"),
}
_MEDS = {
    "clozapine": Medication("clozapine", "MedicationRequest/c", "test"),
    "docetaxel": Medication("docetaxel", "MedicationRequest/d", "test", antineoplastic=True),
}

labs_strategy = st.fixed_dictionaries(
    {
        "wbc": st.one_of(st.none(), st.floats(0.05, 12.0)),
        "anc_fraction": st.one_of(st.none(), st.floats(0.0, 0.9)),
        "hb": st.one_of(st.none(), st.floats(6.0, 17.0)),
        "plt": st.one_of(st.none(), st.floats(10.0, 400.0)),
        "mcv": st.one_of(st.none(), st.floats(70.0, 115.0)),
        "history": st.lists(st.floats(0.5, 8.0), max_size=3),
        "condition": st.sampled_from([None, "duffy", "chemo", "viral"]),
        "med": st.sampled_from([None, "clozapine", "docetaxel"]),
        "birth": st.sampled_from([date(1960, 4, 2), date(2019, 6, 1), date(2025, 12, 1)]),
        "preliminary": st.booleans(),
    }
)


def _labs(c: dict, fever: bool, red_flag: bool) -> PatientLabs:  # type: ignore[type-arg]
    results: list[Result] = []
    status = "preliminary" if c["preliminary"] else "final"
    wbc = c["wbc"]
    values = {
        Analyte.WBC: wbc,
        Analyte.ANC: None
        if wbc is None or c["anc_fraction"] is None
        else round(wbc * c["anc_fraction"], 2),
        Analyte.HAEMOGLOBIN: c["hb"],
        Analyte.PLATELETS: c["plt"],
        Analyte.MCV: c["mcv"],
    }
    if wbc is None and values[Analyte.ANC] is None:
        values[Analyte.ANC] = 1.2
    for i, (analyte, v) in enumerate(values.items()):
        if v is not None:
            results.append(Result(analyte, round(v, 2), _DRAW_TIME, f"Observation/i{i}", status))
    for k, v in enumerate(c["history"]):
        when = _DRAW_TIME - timedelta(days=60 * (len(c["history"]) - k))
        results.append(Result(Analyte.WBC, round(v, 2), when, f"Observation/h{k}"))
    if fever:
        results.append(Result(Analyte.BODY_TEMPERATURE, 38.7, _DRAW_TIME, "Observation/t"))
    conditions = [_CONDITIONS[c["condition"]]] if c["condition"] else []
    if red_flag:
        conditions.append(ClinicalCondition("red-flag", "splenomegaly", "Condition/r", "test"))
    return PatientLabs(
        patient_id="p1",
        birth_date=c["birth"],
        sex="female",
        results=tuple(results),
        medications=(_MEDS[c["med"]],) if c["med"] else (),
        conditions=tuple(conditions),
    )


@settings(max_examples=400, deadline=None)
@given(labs_strategy, st.sampled_from(["fever", "red-flag"]))
def test_adding_fever_or_a_red_flag_never_lowers_risk(c: dict, add: str) -> None:  # type: ignore[type-arg]
    before = assess_labs(_labs(c, fever=False, red_flag=False), NOW)
    after = assess_labs(_labs(c, fever=add == "fever", red_flag=add == "red-flag"), NOW)
    assert after.risk.rank >= before.risk.rank, (before.headline, after.headline)
    if urgent_suggestions(before):
        assert urgent_suggestions(after), (before.headline, after.headline)
        assert top_priority(after) >= top_priority(before)

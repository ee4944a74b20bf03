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

"""Cleaning lab results into draws (decision table section 1).

Pure functions: one result per analyte and time (status precedence), identical duplicates
once, results grouped into draws, ANC reported or derived within one draw only. Serial rules
count draws, never results: the same draw re-sent later, in another unit or under another
code, is one point.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from fhir_leuko.clinical.model import (
    ANALYTE_LABEL,
    CBC_ANALYTES,
    STATUS_RANK,
    Analyte,
    DataIssue,
    Draw,
    Result,
    RuleHit,
    when,
)
from fhir_leuko.clinical.references import DECISION_TABLE
from fhir_leuko.clinical.thresholds import Thresholds

_SRC_1_2 = f"{DECISION_TABLE.short} 1.2"

#: For conflicting same-time results of equal status we keep the value that is more
#: worrying, so a conflict can never hide a low count (safety first). Higher is worse only
#: for temperature and MCV.
_HIGHER_IS_WORSE = frozenset({Analyte.BODY_TEMPERATURE, Analyte.MCV})


def dedupe(results: Iterable[Result]) -> tuple[list[Result], list[DataIssue], list[RuleHit]]:
    """Keep one result per analyte and effective time (clinical-rules.md 1.2).

    amended/corrected > final > preliminary; identical duplicates count once; two different
    values with the same status at the same time are reported and the more worrying is kept.
    """
    # Two panels drawn at the same time (different specimens or reports) are two draws.
    by_key: dict[tuple[Analyte, datetime, str | None], list[Result]] = defaultdict(list)
    for r in results:
        by_key[(r.analyte, r.time, r.draw_id)].append(r)
    kept: list[Result] = []
    issues: list[DataIssue] = []
    trace: list[RuleHit] = []
    for (analyte, at, _), group in by_key.items():
        if len(group) == 1:
            kept.append(group[0])
            continue
        best_rank = max(STATUS_RANK.get(r.status, 0) for r in group)
        best = [r for r in group if STATUS_RANK.get(r.status, 0) == best_rank]
        superseded = [r for r in group if STATUS_RANK.get(r.status, 0) < best_rank]
        if superseded:
            trace.append(
                RuleHit(
                    "status-precedence",
                    f"{ANALYTE_LABEL[analyte]} at {when(at)}: {best[0].status} result "
                    f"{best[0].ref} supersedes {', '.join(r.ref for r in superseded)}",
                    f"{_SRC_1_2} (amended/corrected > final > preliminary)",
                )
            )
        values = {r.value for r in best}
        if len(values) == 1:
            if len(best) > 1:
                trace.append(
                    RuleHit(
                        "duplicate",
                        f"{ANALYTE_LABEL[analyte]} at {when(at)}: identical results "
                        f"{', '.join(r.ref for r in best)} counted once",
                        f"{_SRC_1_2} (identical duplicates count once)",
                    )
                )
            kept.append(best[0])
            continue
        pick = max if analyte in _HIGHER_IS_WORSE else min
        chosen = pick(best, key=lambda r: r.value)
        issues.append(
            DataIssue(
                "conflicting-results",
                f"{len(best)} {best[0].status} {ANALYTE_LABEL[analyte]} results at "
                f"{when(at)} disagree ({', '.join(r.shown for r in best)}); "
                f"the more worrying value {chosen.shown} ({chosen.ref}) was used",
                chosen.ref,
                analyte=analyte,
            )
        )
        kept.append(chosen)
    kept.sort(key=lambda r: (r.time, r.analyte))  # a StrEnum orders as its value
    return kept, issues, trace


def group_draws(
    results: Iterable[Result], t: Thresholds
) -> tuple[list[Draw], list[RuleHit], list[DataIssue]]:
    """Group CBC results into draws, oldest first (decision table 1.2 and 1.4).

    Results belong to one draw when they share a specimen / DiagnosticReport, or when their
    effective times are within the tolerance (+-1 h) and no two specimens differ. A result for
    an analyte the draw already has is the same draw re-sent (1.2: draws, not results: later,
    in another unit or under another code): it is kept once - the higher status, else the same
    value once, else the more worrying value, reported - instead of starting a new serial
    point.
    """
    tolerance = timedelta(minutes=t.same_draw_tolerance_minutes)
    groups: list[tuple[datetime, dict[Analyte, Result], set[str]]] = []
    by_draw_id: dict[str, int] = {}
    trace: list[RuleHit] = []
    issues: list[DataIssue] = []
    for r in sorted(results, key=lambda r: r.time):
        if r.analyte not in CBC_ANALYTES:
            continue
        idx: int | None = None
        if r.draw_id is not None and r.draw_id in by_draw_id:
            idx = by_draw_id[r.draw_id]
        if idx is None:
            for i in range(len(groups) - 1, -1, -1):
                anchor, members, ids = groups[i]
                if r.time - anchor > tolerance:
                    break
                # Two different specimens are never one draw, even when close in time.
                if r.draw_id is not None and ids and r.draw_id not in ids:
                    continue
                idx = i
                break
        if idx is None:
            groups.append((r.time, {}, set()))
            idx = len(groups) - 1
        members = groups[idx][1]
        held = members.get(r.analyte)
        if held is None:
            members[r.analyte] = r
        else:
            members[r.analyte] = _resent(held, r, trace, issues)
        if r.draw_id is not None:
            groups[idx][2].add(r.draw_id)
            by_draw_id.setdefault(r.draw_id, idx)
    draws = [_with_anc(anchor, members) for anchor, members, _ in groups]
    draws.sort(key=lambda d: d.time)
    return draws, trace, issues


def _same_value(a: Result, b: Result) -> bool:
    """Equal after unit normalisation (1,200 /uL and 1.2 10*3/uL are one value)."""
    return abs(a.value - b.value) <= 1e-6 * max(1.0, abs(a.value))


def _resent(held: Result, new: Result, trace: list[RuleHit], issues: list[DataIssue]) -> Result:
    """One draw's analyte sent twice: keep one (status precedence, then the more worrying)."""
    label = ANALYTE_LABEL[held.analyte]
    rank_h, rank_n = STATUS_RANK.get(held.status, 0), STATUS_RANK.get(new.status, 0)
    if rank_h != rank_n:
        keep, drop = (held, new) if rank_h > rank_n else (new, held)
        trace.append(
            RuleHit(
                "status-precedence",
                f"{label} of one draw sent twice: {keep.status} result {keep.ref} supersedes "
                f"{drop.ref}",
                f"{_SRC_1_2} (amended/corrected > final > preliminary; draws, not results)",
            )
        )
        return keep
    if _same_value(held, new):
        trace.append(
            RuleHit(
                "duplicate",
                f"{label} {held.shown} sent again as {new.ref} ({when(new.time)}): the same "
                f"draw as {held.ref}, counted once",
                f"{_SRC_1_2} (serial rules count draws, not results)",
            )
        )
        return held
    pick = max if held.analyte in _HIGHER_IS_WORSE else min
    chosen = pick((held, new), key=lambda r: r.value)
    issues.append(
        DataIssue(
            "conflicting-results",
            f"Two {held.status} {label} results of one draw disagree ({held.shown} in "
            f"{held.ref}, {new.shown} in {new.ref}); the more worrying value {chosen.shown} "
            "was used",
            chosen.ref,
            analyte=held.analyte,
        )
    )
    return chosen


def round_count(value: Decimal) -> float:
    """Round a derived count to 0.01, half up, exactly (5.0 x 30 % is 1.50, not 1.4999...)."""
    return float(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def derive_anc(wbc: float, neutrophil_percent: float, band_percent: float | None) -> float:
    """ANC = WBC x (neutrophil % + band %) / 100, rounded to 0.01 (clinical-rules.md 1.5)."""
    pct = Decimal(repr(neutrophil_percent)) + Decimal(repr(band_percent or 0.0))
    return round_count(Decimal(repr(wbc)) * pct / Decimal(100))


def _with_anc(anchor: datetime, members: dict[Analyte, Result]) -> Draw:
    reported = members.get(Analyte.ANC)
    if reported is not None:
        return Draw(anchor, members, reported.value, False, (reported.ref,))
    wbc = members.get(Analyte.WBC)
    pct = members.get(Analyte.NEUTROPHIL_PERCENT)
    if wbc is not None and pct is not None:
        band = members.get(Analyte.BAND_PERCENT)
        anc = derive_anc(wbc.value, pct.value, band.value if band else None)
        refs = (wbc.ref, pct.ref) + ((band.ref,) if band else ())
        return Draw(anchor, members, anc, True, refs)
    return Draw(anchor, members, None, False, ())

"""The CBC trend of an assessment: the data the chart shows, as JSON and as an inline SVG.

Everything here is read from the :class:`~fhir_leuko.clinical.model.Assessment` the one
evaluation made (its draws, limits, grade and index draw) and from the site's thresholds;
no rule is evaluated. The trend app (``/app/``) gets :func:`trend_json` from
``POST /app/api/evaluate`` and draws it with uPlot; ``fhir-leuko evaluate --format html``
draws :func:`svg_chart` (no script).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from html import escape
from typing import Any

from fhir_leuko.clinical.model import Analyte, Assessment, Draw, NeutropeniaGrade, num, when
from fhir_leuko.clinical.references import row_anchor
from fhir_leuko.clinical.thresholds import Thresholds
from fhir_leuko.fhirio.codes import ACTION_DISPLAY, LOINC, LOINC_ANALYTES
from fhir_leuko.render import COUNT_UNIT, display_units, window

JSON = dict[str, Any]

#: How far back the chart reaches (the app reads the same span from the FHIR server).
TREND_MONTHS = 24
TREND_SPAN = timedelta(days=730)

#: (key, analyte, label, unit), top to bottom.
PANELS: tuple[tuple[str, Analyte, str, str], ...] = (
    ("wbc", Analyte.WBC, "WBC", COUNT_UNIT),
    ("anc", Analyte.ANC, "ANC", COUNT_UNIT),
    ("hb", Analyte.HAEMOGLOBIN, "Haemoglobin", "g/dL"),
    ("plt", Analyte.PLATELETS, "Platelets", COUNT_UNIT),
)
_KEY = {analyte: key for key, analyte, _, _ in PANELS}
_KEY[Analyte.NEUTROPHIL_PERCENT] = "anc"  # an unusable differential belongs with the ANC
_KEY[Analyte.BAND_PERCENT] = "anc"


@dataclass(frozen=True)
class Point:
    time: datetime
    value: float
    shown: str  # as the lab sent it ("<0.1", "1.2")
    preliminary: bool
    derived: bool  # an ANC computed from WBC and differential
    index: bool  # the draw the assessment is about
    ref: str


@dataclass(frozen=True)
class Band:
    low: float
    high: float
    label: str
    level: int  # 1 = just below the lower limit ... 4 = profound


@dataclass(frozen=True)
class Panel:
    key: str
    label: str
    unit: str
    lower_limit: float | None
    bands: tuple[Band, ...]
    points: tuple[Point, ...]


@dataclass(frozen=True)
class Unusable:
    key: str | None  # the panel it belongs to, when it is one of ours
    time: datetime | None
    message: str
    ref: str


@dataclass(frozen=True)
class Trend:
    start: datetime
    end: datetime
    panels: tuple[Panel, ...]
    unusable: tuple[Unusable, ...]
    index_time: datetime | None


# --- Reading the input document (times of unusable results, sex and age for Hb) ---------------


def _resources(doc: Any) -> Iterable[JSON]:
    if isinstance(doc, dict):
        if doc.get("resourceType") == "Bundle":
            for e in doc.get("entry") or ():
                if isinstance(e, dict) and isinstance(e.get("resource"), dict):
                    yield e["resource"]
        else:
            yield doc
    elif isinstance(doc, list):
        for r in doc:
            yield from _resources(r)


def _instant(raw: object) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        try:
            dt = datetime.combine(date.fromisoformat(raw[:10]), datetime.min.time())
        except ValueError:
            return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _effective(r: JSON) -> datetime | None:
    period = r.get("effectivePeriod")
    start = period.get("start") if isinstance(period, dict) else None
    return _instant(r.get("effectiveDateTime") or r.get("effectiveInstant") or start) or (
        _instant(r.get("issued"))
    )


@dataclass(frozen=True)
class _DocFacts:
    times: Mapping[str, datetime]
    analytes: Mapping[str, Analyte]  # by reference, from the LOINC code
    sex: str | None
    birth: date | None


def _facts(doc: Any) -> _DocFacts:
    times: dict[str, datetime] = {}
    analytes: dict[str, Analyte] = {}
    sex: str | None = None
    birth: date | None = None
    for r in _resources(doc):
        kind, rid = r.get("resourceType"), r.get("id")
        if kind == "Patient":
            sex = r.get("gender") if isinstance(r.get("gender"), str) else None
            b = _instant(r.get("birthDate"))
            birth = b.date() if b else None
        elif kind == "Observation" and isinstance(rid, str):
            t = _effective(r)
            if t is not None:
                times[f"Observation/{rid}"] = t
            code = r.get("code")
            for c in (code.get("coding") or ()) if isinstance(code, dict) else ():
                if isinstance(c, dict) and c.get("system") == LOINC:
                    analyte = LOINC_ANALYTES.get(str(c.get("code")))
                    if analyte is not None:
                        analytes[f"Observation/{rid}"] = analyte
    return _DocFacts(times, analytes, sex, birth)


# --- Building the trend ----------------------------------------------------------------------


def _anc_bands(lln: float, t: Thresholds) -> tuple[Band, ...]:
    """The neutropenia grades as bands (CTCAE v5.0, with the site's floors)."""
    return (
        Band(t.anc_mild_floor, lln, "mild", 1),
        Band(t.anc_moderate_floor, t.anc_mild_floor, "moderate", 2),
        Band(t.anc_severe_floor, t.anc_moderate_floor, "severe", 3),
        Band(0.0, t.anc_severe_floor, "profound", 4),
    )


def _points(key: str, analyte: Analyte, draws: Sequence[Draw], index: Draw | None) -> list[Point]:
    out: list[Point] = []
    for d in draws:
        is_index = index is not None and d.time == index.time
        if analyte is Analyte.ANC:
            if d.anc is None:
                continue
            r = d.results.get(Analyte.ANC)
            shown = r.shown if r is not None and not d.anc_derived else num(d.anc)
            ref = r.ref if r is not None else ", ".join(d.anc_refs)
            out.append(Point(d.time, d.anc, shown, d.preliminary, d.anc_derived, is_index, ref))
            continue
        r = d.results.get(analyte)
        if r is not None:
            out.append(Point(r.time, r.value, r.shown, r.preliminary, False, is_index, r.ref))
    return out


def build_trend(
    a: Assessment, doc: Any, thresholds: Thresholds, draws: Sequence[Draw] | None = None
) -> Trend:
    """The chart of ``a`` (evaluated from ``doc``): 24 months up to the evaluation time.

    ``draws``: all the draws to show, when ``a`` was evaluated from fewer (the CDS windows).
    """
    end = a.now
    earliest = end - TREND_SPAN
    draws = [d for d in (a.draws if draws is None else draws) if earliest <= d.time <= end]
    # The axis starts a little before the first draw (24 months at most, 30 days at least).
    first = draws[0].time if draws else end
    start = max(earliest, min(first - (end - first) / 10, end - timedelta(days=30)))
    facts = _facts(doc)
    limits: dict[str, float | None] = {
        "wbc": a.wbc_lln,
        "anc": a.anc_lln,
        "hb": a.hb_lln,
        "plt": thresholds.platelets_low,
    }
    panels = []
    for key, analyte, label, unit in PANELS:
        lln = limits[key]
        if key == "anc":
            bands = _anc_bands(a.anc_lln, thresholds)
        else:
            bands = (Band(0.0, lln, f"below {num(lln)}", 1),) if lln else ()
        points = tuple(_points(key, analyte, draws, a.index_draw))
        panels.append(Panel(key, label, unit, lln, bands, points))
    unusable = []
    for i in a.issues:
        if i.ref is None or i.severity == "information":
            continue
        measured = i.analyte or facts.analytes.get(i.ref)
        panel = _KEY.get(measured) if measured is not None else None
        unusable.append(Unusable(panel, facts.times.get(i.ref), display_units(i.message), i.ref))
    return Trend(
        start,
        end,
        tuple(panels),
        tuple(unusable),
        a.index_draw.time if a.index_draw else None,
    )


# --- JSON for the app ------------------------------------------------------------------------


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def trend_json(t: Trend) -> JSON:
    return {
        "start": _iso(t.start),
        "end": _iso(t.end),
        "indexTime": _iso(t.index_time),
        "panels": [
            {
                "key": p.key,
                "label": p.label,
                "unit": p.unit,
                "lowerLimit": p.lower_limit,
                "bands": [
                    {"low": b.low, "high": b.high, "label": b.label, "level": b.level}
                    for b in p.bands
                ],
                "points": [
                    {
                        "time": _iso(x.time),
                        "value": x.value,
                        "shown": x.shown,
                        "status": "preliminary" if x.preliminary else "final",
                        "derived": x.derived,
                        "index": x.index,
                        "ref": x.ref,
                    }
                    for x in p.points
                ],
            }
            for p in t.panels
        ],
        "unusable": [
            {"panel": u.key, "time": _iso(u.time), "message": u.message, "ref": u.ref}
            for u in t.unusable
        ],
    }


def assessment_json(a: Assessment, rules_url: str, row_title: str) -> JSON:
    """What the app shows beside the chart: the same words as the cards, as data."""
    from fhir_leuko.clinical.references import BY_SHORT

    def cites(source: str) -> list[JSON]:
        out = []
        for name in (p.strip() for p in source.split(";")):
            if name:
                ref = BY_SHORT.get(name)
                url = f"{rules_url}#{ref.anchor}" if ref else None
                out.append({"name": display_units(name), "url": url})
        return out

    return {
        "headline": display_units(a.headline),
        "risk": a.risk.value,
        "grade": a.grade.value,
        "preliminary": a.preliminary,
        "row": str(a.row),
        "rowTitle": row_title,
        "rowUrl": f"{rules_url}#{row_anchor(str(a.row))}",
        "rulesUrl": rules_url,
        "findings": [
            {"code": f.code, "text": display_units(f.text), "sources": cites(f.source)}
            for f in a.findings
        ],
        "orders": [
            {
                "action": r.action.value,
                "display": ACTION_DISPLAY[r.action],
                "priority": r.priority.value,
                "optional": r.optional,
                "window": window(r, a.now),
                "reason": display_units(r.reason),
                "sources": cites(r.source),
            }
            for r in a.recommendations
        ],
        "notProposed": [display_units(n) for n in a.not_proposed],
        "medications": [
            {
                "name": x.name,
                "ref": x.ref,
                "matchedBy": x.matched_by,
                "antineoplastic": x.antineoplastic,
            }
            for x in a.medications
        ],
        "conditions": [{"display": c.display, "ref": c.ref} for c in a.conditions],
        "advice": [display_units(x) for x in a.mitigation],
        "issues": [{"message": display_units(i.message), "severity": i.severity} for i in a.issues],
    }


# --- Inline SVG (the HTML report) --------------------------------------------------------------

_W, _PANEL_H, _LEFT, _RIGHT, _TOP, _GAP = 760, 120, 48, 90, 24, 40
_BAND_FILL = {1: "#fde2e1", 2: "#f9c4c0", 3: "#f29a93", 4: "#e8665c"}
_INK, _LINE, _MUTED = "#1a1a1a", "#0b57a4", "#4a4a4a"


def _ticks(start: datetime, end: datetime, n: int = 6) -> list[datetime]:
    step = (end - start) / (n - 1)
    return [start + step * i for i in range(n)]


def svg_chart(t: Trend) -> str:
    """Four stacked panels over one time axis, as inline SVG with titles on every mark."""
    span = (t.end - t.start).total_seconds() or 1.0
    plot_w = _W - _LEFT - _RIGHT
    height = _TOP + len(t.panels) * (_PANEL_H + _GAP) + 48
    keys = {p.key for p in t.panels}

    def x_of(dt: datetime) -> float:
        return _LEFT + plot_w * min(max((dt - t.start).total_seconds() / span, 0.0), 1.0)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height}" '
        f'width="100%" role="img" aria-labelledby="chart-title chart-desc" class="trend">',
        '<title id="chart-title">CBC trend over 24 months</title>',
        '<desc id="chart-desc">WBC, ANC, haemoglobin and platelets over time. Shaded: below the '
        "lower limit (for ANC, the neutropenia grades). Filled dots: final results; hollow "
        "dashed dots: preliminary; ringed: the index draw; crosses: results that could not be "
        "used. The table below lists the same values.</desc>",
    ]
    for i, p in enumerate(t.panels):
        top = _TOP + i * (_PANEL_H + _GAP)
        values = [x.value for x in p.points]
        hi = max([*values, *(b.high for b in p.bands), p.lower_limit or 0.0, 1e-9]) * 1.15
        lo = 0.0

        def y_of(v: float, top: float = top, lo: float = lo, hi: float = hi) -> float:
            return top + _PANEL_H * (1 - (min(max(v, lo), hi) - lo) / (hi - lo))

        out.append(f'<g class="panel" data-panel="{p.key}">')
        out.append(
            f'<text x="{_LEFT}" y="{top - 6}"><tspan font-weight="bold">{escape(p.label)}'
            f'</tspan> <tspan fill="{_MUTED}">({escape(p.unit)})</tspan></text>'
        )
        for b in p.bands:
            y1, y2 = y_of(b.high), y_of(b.low)
            out.append(
                f'<rect class="band" data-level="{b.level}" x="{_LEFT}" y="{y1:.1f}" '
                f'width="{plot_w}" height="{max(y2 - y1, 0.5):.1f}" fill="{_BAND_FILL[b.level]}">'
                f"<title>{escape(p.label)} {escape(b.label)}: {num(b.low)}–{num(b.high)}"
                f"</title></rect>"
            )
            if p.key == "anc" and y2 - y1 >= 9:
                out.append(
                    f'<text x="{_W - _RIGHT + 6}" y="{(y1 + y2) / 2 + 4:.1f}" fill="{_MUTED}">'
                    f"{escape(b.label)}</text>"
                )
        out.append(
            f'<rect x="{_LEFT}" y="{top}" width="{plot_w}" height="{_PANEL_H}" fill="none" '
            f'stroke="#767676"/>'
        )
        if p.lower_limit and p.key != "anc":
            y = y_of(p.lower_limit)
            out.append(
                f'<line class="lower-limit" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" '
                f'y2="{y:.1f}" stroke="#8a1c14" stroke-dasharray="4 3"/>'
                f'<text x="{_W - _RIGHT + 6}" y="{y + 4:.1f}" fill="#8a1c14">'
                f"limit {num(p.lower_limit)}</text>"
            )
        for v in (lo, hi / 1.15):
            out.append(
                f'<text x="{_LEFT - 4}" y="{y_of(v) + 4:.1f}" text-anchor="end" '
                f'fill="{_MUTED}" font-size="10">{num(v)}</text>'
            )
        if len(p.points) > 1:
            path = " ".join(f"{x_of(x.time):.1f},{y_of(x.value):.1f}" for x in p.points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{_LINE}"/>')
        for x in p.points:
            cx, cy = x_of(x.time), y_of(x.value)
            status = "preliminary" if x.preliminary else "final"
            label = (
                f"{p.label} {x.shown} {p.unit}{' (derived)' if x.derived else ''}, "
                f"{when(x.time)}, {status}{', index draw' if x.index else ''}"
            )
            style = (
                f'fill="#fff" stroke="{_LINE}" stroke-dasharray="2 2" stroke-width="2"'
                if x.preliminary
                else f'fill="{_LINE}" stroke="{_LINE}"'
            )
            out.append(
                f'<circle class="point {status}" data-value="{x.value:g}" cx="{cx:.1f}" '
                f'cy="{cy:.1f}" r="4" {style}><title>{escape(label)}</title></circle>'
            )
            if x.index:
                out.append(
                    f'<circle class="index-mark" cx="{cx:.1f}" cy="{cy:.1f}" r="8" fill="none" '
                    f'stroke="{_INK}" stroke-width="1.5"/>'
                )
        for u in t.unusable:
            if u.key != p.key or u.time is None:
                continue
            cx, cy = x_of(u.time), top + _PANEL_H - 8
            out.append(
                f'<g class="unusable"><title>{escape(u.message)}</title>'
                f'<path d="M{cx - 5:.1f},{cy - 5:.1f} l10,10 m0,-10 l-10,10" stroke="#8a1c14" '
                f'stroke-width="2.5"/></g>'
            )
        out.append("</g>")
    axis_y = _TOP + len(t.panels) * (_PANEL_H + _GAP) - _GAP + 16
    loose = [u for u in t.unusable if u.time is not None and (u.key is None or u.key not in keys)]
    if loose:
        strip = axis_y + 22
        out.append(
            f'<text x="{_LEFT - 4}" y="{strip + 4}" text-anchor="end" fill="#8a1c14" '
            f'font-size="10">not used</text>'
        )
        for u in loose:
            assert u.time is not None
            cx = x_of(u.time)
            out.append(
                f'<g class="unusable"><title>{escape(u.message)}</title>'
                f'<path d="M{cx - 5:.1f},{strip - 5:.1f} l10,10 m0,-10 l-10,10" '
                f'stroke="#8a1c14" stroke-width="2.5"/></g>'
            )
    for tick in _ticks(t.start, t.end):
        out.append(
            f'<text x="{x_of(tick):.1f}" y="{axis_y}" text-anchor="middle" fill="{_MUTED}">'
            f"{tick.date().isoformat()}</text>"
        )
    if t.index_time is not None:
        xi = x_of(t.index_time)
        out.append(
            f'<line class="index-line" x1="{xi:.1f}" x2="{xi:.1f}" y1="{_TOP}" '
            f'y2="{axis_y - 14}" stroke="{_INK}" stroke-dasharray="1 3"/>'
        )
    out.append("</svg>")
    return "\n".join(out)


def grade_words(a: Assessment) -> str:
    return a.grade.value if a.grade is not NeutropeniaGrade.UNKNOWN else "unknown (no ANC)"

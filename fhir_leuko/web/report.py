"""``fhir-leuko evaluate FILE --format html``: one self-contained page, no script.

The chart (inline SVG), a table of the same values, and the assessment in the words the
cards use; the references it cites are listed at the end of the file itself, so it reads
the same offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from html import escape
from typing import Any

from fhir_leuko.clinical.model import Assessment, when
from fhir_leuko.clinical.references import BY_SHORT, REFERENCES, Reference, row_anchor
from fhir_leuko.clinical.thresholds import Thresholds
from fhir_leuko.fhirio.codes import ACTION_DISPLAY
from fhir_leuko.render import display_units, window
from fhir_leuko.web.html import page
from fhir_leuko.web.trend import Trend, build_trend, grade_words, svg_chart

_STYLE = """
.headline { border-left: 6px solid currentColor; padding: .25rem .75rem; }
.cite { font-style: italic; color: var(--muted); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.preliminary td { font-style: italic; }
tr.index td { font-weight: bold; }
"""


def _cite(source: str, cited: list[Reference]) -> str:
    parts = []
    for name in (p.strip() for p in source.split(";")):
        if not name:
            continue
        ref = BY_SHORT.get(name)
        if ref is None:
            parts.append(escape(display_units(name)))
            continue
        if ref not in cited:
            cited.append(ref)
        parts.append(f'<a href="#{escape(ref.anchor)}">{escape(name)}</a>')
    return f' <span class="cite">({"; ".join(parts)})</span>' if parts else ""


def _list(title: str, items: Sequence[str]) -> str:
    if not items:
        return ""
    lis = "\n".join(f"<li>{x}</li>" for x in items)
    return f"<h2>{escape(title)}</h2>\n<ul>\n{lis}\n</ul>"


def _table(t: Trend) -> str:
    """One row per draw time, the four values side by side (the chart's data, readable)."""
    times: dict[datetime, dict[str, str]] = {}
    status: dict[datetime, set[str]] = {}
    index: set[datetime] = set()
    for p in t.panels:
        for x in p.points:
            times.setdefault(x.time, {})[p.key] = x.shown + ("*" if x.derived else "")
            status.setdefault(x.time, set()).add("preliminary" if x.preliminary else "final")
            if x.index:
                index.add(x.time)
    head = "".join(f'<th scope="col">{escape(p.label)} ({escape(p.unit)})</th>' for p in t.panels)
    rows = []
    for when_, vals in sorted(times.items(), reverse=True):
        st = "preliminary" if "preliminary" in status[when_] else "final"
        cls = f"{st}{' index' if when_ in index else ''}"
        cells = "".join(f'<td class="num">{escape(vals.get(p.key, "–"))}</td>' for p in t.panels)
        note = f"{st}{', index draw' if when_ in index else ''}"
        rows.append(
            f'<tr class="{cls}"><th scope="row">{escape(when(when_))}</th>{cells}'
            f"<td>{note}</td></tr>"
        )
    for u in t.unusable:
        rows.append(
            f'<tr class="unusable"><th scope="row">{escape(when(u.time)) if u.time else "–"}'
            f'</th><td colspan="{len(t.panels)}">not used: {escape(u.message)}</td>'
            "<td>unusable</td></tr>"
        )
    return (
        '<table class="trend-table"><caption>The values in the chart (newest first; '
        "* derived ANC)</caption>\n"
        f'<thead><tr><th scope="col">Drawn</th>{head}<th scope="col">Status</th></tr></thead>\n'
        f"<tbody>\n{chr(10).join(rows)}\n</tbody></table>"
    )


def html_report(
    a: Assessment, doc: Any, thresholds: Thresholds, rules_url: str | None = None
) -> str:
    """The page for ``a`` (evaluated from ``doc``); ``rules_url`` links the decision row when
    the service's public address is known."""
    t = build_trend(a, doc, thresholds)
    cited: list[Reference] = []
    who = f"Patient/{a.patient_id}" if a.patient_id else "Patient (not identified)"
    row = f"decision table row {escape(str(a.row))}"
    if rules_url:
        row = f'<a href="{escape(rules_url)}#{escape(row_anchor(str(a.row)))}">{row}</a>'
    decided = next((h for h in a.trace if h.rule.startswith("row-")), None)
    findings = [escape(display_units(f.text)) + _cite(f.source, cited) for f in a.findings]
    if decided is not None:
        findings.append(
            f"<strong>Decision:</strong> {escape(display_units(decided.text))}"
            + _cite(decided.source, cited)
        )
    orders = [
        f"<strong>{escape(ACTION_DISPLAY[r.action])}</strong> ({escape(r.priority.value)}"
        f"{', optional' if r.optional else ''}; {escape(window(r, a.now))}): "
        f"{escape(display_units(r.reason))}" + _cite(r.source, cited)
        for r in a.recommendations
    ]
    meds = [
        f"{escape(x.name)} ({escape(x.ref)}; matched by {escape(x.matched_by)})"
        + (" — neutropenia is expected: per the oncology protocol" if x.antineoplastic else "")
        for x in a.medications
    ]
    body = [
        f'<h1>CBC trend and assessment</h1>\n<p class="muted">{escape(who)}, evaluated '
        f"{escape(when(a.now))}; {row}.</p>",
        f'<p class="headline risk-{escape(a.risk.value)}"><strong>Risk '
        f"{escape(a.risk.value)}</strong>: {escape(display_units(a.headline))}. "
        f"Neutropenia grade: {escape(grade_words(a))}"
        f"{' (preliminary results)' if a.preliminary else ''}.</p>",
        f"<figure>\n{svg_chart(t)}\n</figure>",
        _table(t),
        _list("Findings", findings),
        _list("Suggested orders", orders),
        _list("Not proposed", [escape(display_units(n)) for n in a.not_proposed]),
        _list("Active medications known to lower white cells", meds),
        _list(
            "Recorded conditions that can explain it",
            [f"{escape(c.display)} ({escape(c.ref)})" for c in a.conditions],
        ),
        _list("Advice", [escape(display_units(x)) for x in a.mitigation]),
        _list(
            "Data not used",
            [escape(display_units(i.message)) for i in a.issues if i.severity != "information"],
        ),
    ]
    refs = [r for r in REFERENCES if r in cited]
    if refs:
        body.append(
            _list(
                "References",
                [
                    f'<span id="{escape(r.anchor)}"><strong>{escape(r.short)}</strong>: '
                    f"{escape(r.citation)}</span>" + (f" {escape(r.url)}" if r.url else "")
                    for r in refs
                ],
            )
        )
    return page(
        "fhir-leuko: CBC trend and assessment", "\n".join(b for b in body if b), extra_style=_STYLE
    )

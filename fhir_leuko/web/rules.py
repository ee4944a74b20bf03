"""The decision table as a web page (``GET /rules``), with an id per row and per reference.

The Markdown comes from :func:`fhir_leuko.clinical.table.render_markdown` with the site's
thresholds, so the page shows the numbers the service decides with. Cards link to
``<public base>/rules#row-<row>`` and to the reference anchors (``#ref-...``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape

from fhir_leuko.clinical.references import DECISION_TABLE, REFERENCES, Reference
from fhir_leuko.clinical.table import render_markdown
from fhir_leuko.clinical.thresholds import Thresholds
from fhir_leuko.web.html import page
from fhir_leuko.web.markdown import to_html

_ROW_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*\{#row-([A-Za-z0-9]+)\}\s*$", re.MULTILINE)
_EMPHASIS = re.compile(r"[*_`]")


@dataclass(frozen=True)
class RulesPage:
    html: str
    ids: frozenset[str]  # every id on the page
    row_titles: Mapping[str, str]  # "1b" -> "Row 1b — presumed febrile neutropenia"


def row_titles(markdown: str) -> dict[str, str]:
    """Each row's heading text, by row id, from the table's Markdown."""
    return {
        m.group(2): " ".join(_EMPHASIS.sub("", m.group(1)).split())
        for m in _ROW_HEADING.finditer(markdown)
    }


def _citation(ref: Reference, with_id: bool) -> str:
    ident = f' id="{escape(ref.anchor)}"' if with_id else ""
    link = (
        f' <a href="{escape(ref.url)}" rel="noopener noreferrer">{escape(ref.url)}</a>'
        if ref.url
        else ""
    )
    return f"<li{ident}><strong>{escape(ref.short)}</strong>: {escape(ref.citation)}{link}</li>"


@functools.lru_cache(maxsize=8)
def rules_page(thresholds: Thresholds) -> RulesPage:
    """The page for these thresholds (built once per set of thresholds)."""
    markdown = render_markdown(thresholds)
    body, made = to_html(markdown)
    ids = set(made)
    top = "" if DECISION_TABLE.anchor in ids else f' id="{DECISION_TABLE.anchor}"'
    ids.add(DECISION_TABLE.anchor)
    citations = [_citation(r, r.anchor not in ids) for r in REFERENCES]
    ids.update(r.anchor for r in REFERENCES)
    html = page(
        "fhir-leuko decision table",
        f'<div{top} class="table-source">\n{body}</div>\n'
        '<section aria-labelledby="full-citations">\n'
        '<h2 id="full-citations">Full citations</h2>\n'
        f"<ol>\n{chr(10).join(citations)}\n</ol>\n"
        f'<p class="muted">{escape(DECISION_TABLE.citation)}</p>\n</section>',
    )
    return RulesPage(html=html, ids=frozenset(ids), row_titles=row_titles(markdown))

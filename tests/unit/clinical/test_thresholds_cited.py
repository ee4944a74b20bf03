"""Every threshold has its source written beside it (a comment block just above the field)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import fhir_leuko.clinical.thresholds as thresholds_module
from fhir_leuko.clinical.references import DECISION_TABLE, REFERENCES
from fhir_leuko.clinical.thresholds import threshold_names

# A threshold cites a reference a clinician can look up (fhir_leuko.clinical.references), the
# project's decision table, or the lab's own range; never the project's working notes.
SOURCE_WORDS = re.compile(
    "|".join(re.escape(r.short) for r in (*REFERENCES, DECISION_TABLE))
    + r"|decision table|lab reference|reference range|labs differ|implausible|plausib",
    re.IGNORECASE,
)
WORKING_NOTES = re.compile(r"seeds? \d|all seeds|codes\.md", re.IGNORECASE)


def test_every_threshold_field_has_a_cited_comment_above_it() -> None:
    path = Path(thresholds_module.__file__)
    lines = path.read_text(encoding="utf-8").splitlines()
    tree = ast.parse("\n".join(lines))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Thresholds")
    missing = []
    for node in cls.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        # Walk up over sibling fields and blank lines to the nearest comment block.
        i = node.lineno - 2
        comment: list[str] = []
        while i >= 0:
            text = lines[i].strip()
            if text.startswith("#"):
                comment.insert(0, text)
            elif comment or (text and not re.match(r"\w+: (int|float) = ", text)):
                break
            i -= 1
        if not SOURCE_WORDS.search(" ".join(comment)):
            missing.append(node.target.id)
    assert missing == []
    assert len(threshold_names()) > 40


def test_no_threshold_cites_working_notes() -> None:
    text = Path(thresholds_module.__file__).read_text(encoding="utf-8")
    assert WORKING_NOTES.findall(text) == []

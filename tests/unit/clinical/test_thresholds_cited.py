"""Every threshold has its source written beside it (a comment block just above the field)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import fhir_leuko.clinical.thresholds as thresholds_module
from fhir_leuko.clinical.thresholds import threshold_names

SOURCE_WORDS = re.compile(
    r"seed 00\d|seeds? \d|IDSA|CTCAE|WHO|ASCO|Merz|ASH|clinical-rules|codes\.md|paediatric|"
    r"Pediatrics|lab reference|reference range|labs differ|clozapine ANC|prefetch|as above|"
    r"implausible|plausib",
    re.IGNORECASE,
)


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

"""Text from input, made safe to show as Markdown: the one escaping function of the output.

FHIR's ``markdown`` type (``Annotation.text`` in RiskAssessment and ServiceRequest notes) and
a CDS card's ``detail`` are rendered by EHRs and the public sandbox as GitHub-flavoured
Markdown with raw HTML allowed. Whatever we copy there from the input (medication and
condition names, references, data-issue messages quoting a value) could otherwise carry
``<img onerror=...>``, a link or a heading; :func:`md` makes it render as itself.
"""

from __future__ import annotations

import re

#: In this order: the backslash first, then "&" before the entities that contain it. Each
#: str.replace is a C scan, and most characters need nothing; one str.translate with a table
#: of multi-character replacements costs ~70 ns a character (measured), ten times as much.
_MD_REPLACEMENTS = (
    ("\\", "\\\\"),
    ("&", "&amp;"),
    ("<", "&lt;"),
    (">", "&gt;"),
    *((c, "\\" + c) for c in "`*_{}[]()#+!|~@"),
)
_SCHEME = re.compile(r"(?i)\b(https?|ftp|mailto|javascript|data):")
_WWW = re.compile(r"(?i)\bwww\.")


def md(text: object) -> str:
    """Text that renders as itself in GitHub-flavoured Markdown, raw HTML included.

    HTML-escapes ``& < >``, backslash-escapes Markdown punctuation, and breaks URL schemes
    and ``www.`` so nothing turns into a link; newlines become spaces so input cannot start
    a block of its own.
    """
    s = " ".join(str(text).split())
    for char, escaped in _MD_REPLACEMENTS:
        if char in s:
            s = s.replace(char, escaped)
    # The regexes only where they can match: times put ":" and numbers "." in most texts.
    if ":" in s or "." in s:
        low = s.lower()
        if ":" in s and ("tp" in low or "mailto" in low or "javascript" in low or "data" in low):
            s = _SCHEME.sub(lambda m: m.group(1) + "\\:", s)
        if "www." in low:
            s = _WWW.sub(lambda m: m.group(0)[:-1] + "\\.", s)
    return s

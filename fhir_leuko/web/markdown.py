"""Markdown -> HTML for the decision table page: CommonMark plus pipe tables, no raw HTML.

markdown-it-py does the parsing and escaping (raw HTML in the source is shown as text, and
``javascript:``-style links are not made into links). One addition: a block whose text ends
with ``{#some-id}`` (a heading, a list item, a paragraph or a table row) gets that ``id``, so
that cards can link to a row or a reference of the table.
"""

from __future__ import annotations

import re

from markdown_it import MarkdownIt
from markdown_it.token import Token

_ANCHOR = re.compile(r"\s*\{#([A-Za-z][A-Za-z0-9_.-]*)\}\s*$")
#: The blocks an anchor may name, nearest first.
_TARGETS = ("heading_open", "list_item_open", "tr_open", "paragraph_open")


def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def _owner(tokens: list[Token], inline_at: int) -> Token | None:
    """The block an inline token's trailing anchor belongs to."""
    depth = 0
    for tok in reversed(tokens[max(0, inline_at - 64) : inline_at]):
        if tok.nesting == -1:
            depth += 1
            continue
        if tok.nesting == 1:
            if depth:
                depth -= 1
                continue
            if tok.type in ("heading_open", "list_item_open", "tr_open"):
                return tok
            if tok.type in ("th_open", "td_open", "paragraph_open"):
                continue  # look further out: a list item or a table row
    # A plain paragraph (no list item or row around it).
    before = tokens[inline_at - 1] if inline_at else None
    return before if before is not None and before.type == "paragraph_open" else None


def anchors_to_ids(tokens: list[Token]) -> list[str]:
    """Move trailing ``{#id}`` markers into ``id`` attributes; return the ids, in order.

    A repeated id is kept on its first block only (ids are unique in a page).
    """
    seen: list[str] = []
    for i, tok in enumerate(tokens):
        if tok.type != "inline":
            continue
        m = _ANCHOR.search(tok.content)
        if m is None:
            continue
        anchor = m.group(1)
        tok.content = tok.content[: m.start()]
        children = tok.children or []
        if children and children[-1].type == "text":
            last = children[-1]
            last.content = _ANCHOR.sub("", last.content).rstrip()
        owner = _owner(tokens, i)
        if owner is not None and anchor not in seen:
            owner.attrSet("id", anchor)
            seen.append(anchor)
    return seen


def to_html(source: str) -> tuple[str, list[str]]:
    """The HTML of ``source`` and the ids its anchors made."""
    md = _parser()
    tokens = md.parse(source)
    ids = anchors_to_ids(tokens)
    return md.renderer.render(tokens, md.options, {}), ids

"""The one HTML page shell the service and the CLI share: escaping, styles, layout."""

from __future__ import annotations

from html import escape

#: Colours chosen for contrast >= 4.5:1 on white (WCAG 2.1 AA) for text, >= 3:1 for marks.
STYLE = """
:root { color-scheme: light; --ink: #1a1a1a; --muted: #4a4a4a; --link: #0b57a4;
  --line: #767676; --band: #fde2e1; --band-ink: #8a1c14; --focus: #b35c00; }
* { box-sizing: border-box; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); background: #fff; margin: 0; }
main, header, footer { max-width: 72rem; margin: 0 auto; padding: 0 1rem; }
a { color: var(--link); }
a:focus-visible, button:focus-visible, [tabindex]:focus-visible {
  outline: 3px solid var(--focus); outline-offset: 2px; }
.skip { position: absolute; left: -999px; }
.skip:focus { left: 1rem; top: 1rem; background: #fff; padding: .5rem; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid var(--line); padding: .25rem .5rem; text-align: left;
  vertical-align: top; }
th { background: #f0f0f0; }
:target { background: #fff4cc; scroll-margin-top: 1rem; }
code { background: #f3f3f3; padding: 0 .2em; }
.muted { color: var(--muted); }
.risk-high { color: #8a1c14; } .risk-moderate { color: #7a4a00; }
.risk-low { color: #0b5a2a; } .risk-negligible { color: var(--muted); }
figure { margin: 1rem 0; }
svg text { font: 12px system-ui, sans-serif; fill: var(--ink); }
"""


def page(title: str, body: str, *, extra_style: str = "", head: str = "") -> str:
    """A complete, accessible HTML5 document (``body`` is trusted HTML)."""
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}{extra_style}</style>\n{head}"
        "</head>\n<body>\n"
        '<a class="skip" href="#main">Skip to content</a>\n'
        f'<main id="main">\n{body}\n</main>\n</body>\n</html>\n'
    )

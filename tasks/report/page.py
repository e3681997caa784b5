"""The pieces of slimline's HTML pages (the release report, the fleet status page): one style
sheet, cells and tables whose text is always escaped, and the document around them. A page is one
self-contained file: inline CSS, no scripts, no external assets."""

from __future__ import annotations

import html

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330;
       max-width: 1280px; margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #d6dae2; padding-bottom: .2em; }
h3 { font-size: 1em; margin: 1.2em 0 .3em; }
.meta { color: #4a5366; margin: .1em 0; }
code { font: 12px ui-monospace, "SFMono-Regular", Menlo, monospace; word-break: break-all; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { border: 1px solid #d6dae2; padding: .3em .6em; vertical-align: top; }
th { background: #f1f3f7; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.pass { color: #17803d; font-weight: 600; }
.fail { color: #c0262d; font-weight: 600; }
.baseline { color: #2563b0; font-weight: 600; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #d6dae2; }
figcaption { color: #4a5366; font-size: .9em; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .15em 1em; margin: .3em 0 1em; }
dt { color: #4a5366; }
dd { margin: 0; }
ol, ul { margin: 0; padding-left: 1.4em; }
"""


def escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def td(text: object, css: str = "") -> str:
    """A cell; its text is always escaped, so no caller can put markup into the page."""
    return f'<td class="{css}">{escape(text)}</td>' if css else f"<td>{escape(text)}</td>"


def td_list(items: list[str]) -> str:
    """A cell holding a bulleted list, each item escaped."""
    if not items:
        return "<td></td>"
    return "<td><ul>" + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul></td>"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A table of cells made by `td`."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "\n".join(f"<tr>{''.join(cells)}</tr>" for cells in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def dl(items: list[tuple[str, str]]) -> str:
    """A definition list of (term, already-escaped HTML) pairs."""
    return "<dl>" + "".join(f"<dt>{escape(term)}</dt><dd>{value}</dd>" for term, value in items) + "</dl>"


def document(title: str, body: str) -> str:
    """A whole HTML document with the style sheet inline."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )

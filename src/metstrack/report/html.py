"""Minimal, dependency-free HTML building blocks for the static report."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

import pandas as pd

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#243b55;color:#fff;padding:12px 24px}
header a{color:#cde}
main{padding:12px 24px;max-width:1400px}
h1{font-size:1.4em;margin:0}
h2{font-size:1.15em;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:28px}
h3{font-size:1.0em;margin:18px 0 6px}
table{border-collapse:collapse;font-size:.85em;margin:6px 0 12px;background:#fff}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#eef1f5}
td.l,th.l{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:150px}
.card .v{font-size:1.35em;font-weight:600}
.card .k{font-size:.8em;color:#555}
img{max-width:100%;border:1px solid #ddd;background:#fff}
.status-new{color:#c0392b;font-weight:600}
.status-growing{color:#d35400}
.status-shrinking{color:#27ae60}
.status-resolved{color:#7f8c8d}
.note{color:#666;font-size:.85em}
.legend span{display:inline-block;width:14px;height:3px;margin:0 4px 3px 10px;vertical-align:middle}
"""

#: Script that records whether every figure loaded (read by the browser test).
CHECK_SCRIPT = """
<script>
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message || e)); }, true);
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-total', imgs.length);
  document.body.setAttribute('data-images-ok', ok);
  document.body.setAttribute('data-errors', window.__errors.length);
});
</script>
"""


def esc(x: object) -> str:
    """HTML-escape any value."""
    return html.escape(str(x), quote=True)


def fmt(x: object, digits: int = 3) -> str:
    """Format a number compactly (``-`` for NaN/None)."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
            return f"{x:.{digits}g}"
        return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{max(1, digits - 1)}f}"
    return str(x)


def page(title: str, body: str, *, nav: str = "") -> str:
    """A whole HTML page with the report's style and the figure check script."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{esc(title)}</title>"
        f"<style>{CSS}</style>{CHECK_SCRIPT}</head><body>"
        f"<header><h1>{esc(title)}</h1>{nav}</header><main>{body}</main></body></html>\n"
    )


def table(
    frame: pd.DataFrame, *, left: Iterable[str] = (), classes: dict[str, str] | None = None
) -> str:
    """Render a DataFrame as an HTML table; ``left`` columns are left-aligned.

    ``classes`` maps a column to a CSS class prefix applied per cell value
    (e.g. ``{"status": "status-"}``).
    """
    left = set(left)
    classes = classes or {}
    head = "".join(f"<th class='{'l' if c in left else ''}'>{esc(c)}</th>" for c in frame.columns)
    rows = []
    for rec in frame.itertuples(index=False):
        cells = []
        for c, v in zip(frame.columns, rec, strict=True):
            cls = "l" if c in left else ""
            if c in classes and isinstance(v, str):
                cls += f" {classes[c]}{esc(v)}"
            cells.append(f"<td class='{cls.strip()}'>{esc(fmt(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def cards(items: Sequence[tuple[str, str]]) -> str:
    """Headline number cards: ``(label, value)`` pairs."""
    inner = "".join(
        f"<div class='card'><div class='v'>{esc(v)}</div><div class='k'>{esc(k)}</div></div>"
        for k, v in items
    )
    return f"<div class='cards'>{inner}</div>"


def figure(src: str, alt: str) -> str:
    """An image element (relative path)."""
    return f"<p><img src='{esc(src)}' alt='{esc(alt)}' loading='eager'></p>"

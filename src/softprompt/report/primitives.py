"""HTML building blocks of the report: escaping, number formatting, tables, embedded figures, sections."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any


def esc(x: Any) -> str:
    return html.escape(str(x))


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(rows: list[dict], columns: list[str] | None = None, headers: dict[str, str] | None = None) -> str:
    if not rows:
        return '<p class="muted">(no rows)</p>'
    columns = columns or list(rows[0])
    headers = headers or {}
    head = "".join(f"<th>{esc(headers.get(c, c))}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{esc(fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(path: str | Path | None, caption: str) -> str:
    """Embed a PNG as a data URI so the report is one file that works offline."""
    if not path or not Path(path).exists():
        return f'<p class="muted">(figure missing: {esc(caption)})</p>'
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return (
        f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}"><figcaption>{esc(caption)}</figcaption></figure>'
    )


def section(title: str, body: str, anchor: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{body}</section>'

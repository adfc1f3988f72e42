"""Small HTML building blocks of the report; every text taken from inputs is escaped."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence

__all__ = ["_esc", "_facts", "_fmt", "_fmt_count", "_img", "_note", "_section", "_table"]


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, alt: str, *, css_class: str | None = None) -> str:
    data = base64.b64encode(png).decode("ascii")
    cls = f' class="{_esc(css_class)}"' if css_class else ""
    return f'<img{cls} src="data:image/png;base64,{data}" alt="{_esc(alt)}">'


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _fmt_count(value: int) -> str:
    return f"{value:,}"


def _table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    numeric: Iterable[int] = (),
    raw: bool = False,
) -> str:
    """An HTML table; cells are escaped unless ``raw`` (then callers escape themselves)."""
    numeric_cols = set(numeric)

    def cell(tag: str, index: int, text: str) -> str:
        cls = ' class="num"' if index in numeric_cols else ""
        return f"<{tag}{cls}>{text if raw and tag == 'td' else _esc(text)}</{tag}>"

    head = "".join(cell("th", index, text) for index, text in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", index, text) for index, text in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _facts(items: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<dt>{_esc(key)}</dt><dd>{_esc(value)}</dd>" for key, value in items)
    return f'<dl class="facts">{body}</dl>'


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{_esc(anchor)}"><h2>{_esc(title)}</h2>\n{body}\n</section>'


def _note(text: str) -> str:
    """A grey explanatory paragraph (``text`` is escaped)."""
    return f'<p class="note">{_esc(text)}</p>'

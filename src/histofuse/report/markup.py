"""The report's templates and the data they draw.

The markup lives in ``templates/*.html.j2`` (Jinja2, autoescaping on for every template, undefined
names an error). Python prepares the data: numbers formatted as text, tables as a header and lists
of rows (:class:`Table`), images as PNG data URIs (:class:`Picture`), and hands each part of a
section to its template as a :class:`Fragment`. No value is marked safe: a data URI made by
:func:`picture` holds only characters that escaping leaves as they are.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2
from matplotlib.figure import Figure

from histofuse.report import plots

__all__ = [
    "TEMPLATES",
    "Fragment",
    "MetricCell",
    "Picture",
    "Section",
    "Table",
    "fmt_count",
    "fmt_number",
    "note",
    "picture",
    "plot",
    "render_page",
]


@dataclass(frozen=True)
class MetricCell:
    """A table cell with a metric: ``text``, then ``count`` in grey, then ``interval`` below (if any)."""

    text: str
    count: str
    interval: str | None = None


@dataclass(frozen=True)
class Table:
    """A table: ``header`` texts, ``rows`` of cells (text or :class:`MetricCell`), right-aligned ``numeric`` columns."""

    header: Sequence[str]
    rows: Sequence[Sequence[str | MetricCell]]
    numeric: frozenset[int] = frozenset()

    @classmethod
    def of(
        cls,
        header: Sequence[str],
        rows: Iterable[Sequence[str | MetricCell]],
        *,
        numeric: Iterable[int] = (),
    ) -> Table:
        """A table from any iterables of rows and numeric column indices."""
        return cls(list(header), [list(row) for row in rows], frozenset(numeric))


@dataclass(frozen=True)
class Picture:
    """An image embedded in the page: ``src`` is a ``data:image/png;base64,`` URI."""

    src: str
    alt: str
    css_class: str | None = None


@dataclass(frozen=True)
class Fragment:
    """One part of a section: the template that draws it and its data (``data`` in the template)."""

    template: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def render(self) -> str:
        """The fragment alone as HTML."""
        return TEMPLATES.get_template(self.template).render(data=self.data)


@dataclass(frozen=True)
class Section:
    """A section of the page: its ``anchor`` (id), ``title`` (heading and navigation) and ``parts``."""

    anchor: str
    title: str
    parts: Sequence[Fragment]


TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("histofuse.report", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
TEMPLATES.tests["metric_cell"] = lambda value: isinstance(value, MetricCell)


def render_page(*, title: str, run_date: str, version: str, sections: Sequence[Section]) -> str:
    """The whole report as one HTML document."""
    return TEMPLATES.get_template("report.html.j2").render(
        title=title, run_date=run_date, version=version, sections=sections
    )


def note(text: str) -> Fragment:
    """A part that is only a grey explanatory paragraph (``text`` is escaped)."""
    return Fragment("note.html.j2", {"text": text})


def picture(png: bytes, alt: str, *, css_class: str | None = None) -> Picture:
    """``png`` as an image embedded in the page."""
    data = base64.b64encode(png).decode("ascii")
    return Picture(src=f"data:image/png;base64,{data}", alt=alt, css_class=css_class)


def plot(fig: Figure, alt: str, kind: str) -> Picture:
    """A figure as an embedded PNG of CSS class ``plot {kind}``."""
    return picture(plots.fig_to_png_bytes(fig), alt, css_class=f"plot {kind}")


def fmt_number(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, or ``n/a`` when missing or not finite."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def fmt_count(value: int) -> str:
    """A count with thousands separators."""
    return f"{value:,}"

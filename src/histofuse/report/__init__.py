"""The HTML report and its figures."""

from __future__ import annotations

from histofuse.report.html import build_report
from histofuse.report.plots import (
    assign_risk_groups,
    fig_to_png_bytes,
    km_figure,
    logrank_pvalue,
    roc_figure,
    save_figure,
    write_km_png,
    write_roc_png,
)

__all__ = [
    "assign_risk_groups",
    "build_report",
    "fig_to_png_bytes",
    "km_figure",
    "logrank_pvalue",
    "roc_figure",
    "save_figure",
    "write_km_png",
    "write_roc_png",
]

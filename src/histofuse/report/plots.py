"""Report figures: Kaplan–Meier curves of predicted risk groups and one-vs-rest ROC curves.

Figures are built on :class:`matplotlib.figure.Figure` with an Agg canvas, so nothing here touches
``pyplot`` or global backend state. Each figure can be turned into PNG bytes
(:func:`fig_to_png_bytes`, used to inline images in the HTML report) or written to a file
atomically (:func:`save_figure`, used by the workflow for ``km.png`` and ``roc.png``).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from histofuse.errors import HistofuseError
from histofuse.evaluate import (
    grade_probability_columns,
    has_grade_task,
    has_survival_task,
    probability_columns,
    read_predictions,
)
from histofuse.io import atomic_path

__all__ = [
    "assign_risk_groups",
    "fig_to_png_bytes",
    "km_figure",
    "format_pvalue",
    "logrank_pvalue",
    "message_figure",
    "new_figure",
    "pooled_test_rows",
    "read_class_names",
    "read_class_names_for",
    "roc_figure",
    "save_figure",
    "write_km_png",
    "write_roc_png",
]

log = logging.getLogger(__name__)

DPI = 110
_GROUP_COLOURS = {"low": "#1b7837", "high": "#b2182b"}
_CLASS_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def new_figure(width: float, height: float) -> Figure:
    """A figure with an Agg canvas attached (independent of the pyplot backend)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def fig_to_png_bytes(fig: Figure, *, dpi: int = DPI) -> bytes:
    """Render ``fig`` to PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()


def save_figure(fig: Figure, path: str | Path, *, dpi: int = DPI) -> None:
    """Write ``fig`` as a PNG file at ``path``, atomically."""
    data = fig_to_png_bytes(fig, dpi=dpi)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def message_figure(message: str, *, width: float = 5.0, height: float = 2.0) -> Figure:
    """A small figure that only states ``message`` (e.g. when a task was not trained)."""
    fig = new_figure(width, height)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, color="#555555")
    return fig


def read_class_names(labels_json: str | Path, n_classes: int | None = None) -> list[str]:
    """Grade class names from ``labels.json`` (``{"grade": {"classes": [...]}}``).

    Falls back to the class indices ``"0" … "K-1"`` (with a warning) when the file has no usable
    list or its length differs from ``n_classes``.
    """
    path = Path(labels_json)
    try:
        classes = json.loads(path.read_text(encoding="utf-8"))["grade"]["classes"]
        names = [str(name) for name in classes]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: no grade class names (%s); using class indices", path, exc)
        names = []
    if n_classes is not None and len(names) != n_classes:
        if names:
            log.warning(
                "%s: %d class names for %d classes; using indices", path, len(names), n_classes
            )
        names = [str(index) for index in range(n_classes)]
    return names


def read_class_names_for(labels_json: str | Path, task: str) -> list[str]:
    """Class names of a classification ``task`` from ``labels.json`` (empty when not listed)."""
    try:
        classes = json.loads(Path(labels_json).read_text(encoding="utf-8"))[task]["classes"]
        return [str(name) for name in classes]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _grid(n_panels: int, *, panel_width: float, panel_height: float) -> tuple[Figure, list[Axes]]:
    ncols = min(max(n_panels, 1), 3)
    nrows = math.ceil(max(n_panels, 1) / ncols)
    fig = new_figure(panel_width * ncols, panel_height * nrows)
    axes = [fig.add_subplot(nrows, ncols, index + 1) for index in range(n_panels)]
    return fig, axes


# --------------------------------------------------------------------------- survival


def assign_risk_groups(predictions: pd.DataFrame) -> pd.DataFrame:
    """Test rows with survival labels, each labelled ``low`` or ``high`` predicted risk.

    For every model and fold the cut-off is the median risk of that fold's *train* rows (so the
    test patients never influence their own grouping); a test risk above it is ``high``. When a
    fold has no train rows the median of its test risks is used, with a warning. Returns the
    columns ``model, fold, patient_id, survival_time, event, risk, threshold, risk_group``.
    """
    columns = [
        "model",
        "fold",
        "patient_id",
        "survival_time",
        "event",
        "risk",
        "threshold",
        "risk_group",
    ]
    if predictions.empty or not has_survival_task(predictions):
        return pd.DataFrame(columns=columns)
    parts: list[pd.DataFrame] = []
    for (model, fold), unit in predictions.groupby(["model", "fold"], sort=True):
        test = unit[
            (unit["split"] == "test")
            & unit["survival_time"].notna()
            & unit["event"].notna()
            & unit["risk"].notna()
        ]
        if test.empty:
            continue
        train_risk = unit.loc[(unit["split"] == "train") & unit["risk"].notna(), "risk"]
        if train_risk.empty:
            log.warning("model %s fold %s: no train rows; cutting at the test median", model, fold)
            train_risk = test["risk"]
        threshold = float(np.median(train_risk.to_numpy(dtype=np.float64)))
        part = pd.DataFrame(
            {
                "model": str(model),
                "fold": int(fold),
                "patient_id": test["patient_id"].astype(str).to_numpy(),
                "survival_time": test["survival_time"].to_numpy(dtype=np.float64),
                "event": test["event"].to_numpy(dtype=np.float64).astype(np.int64),
                "risk": test["risk"].to_numpy(dtype=np.float64),
                "threshold": threshold,
            }
        )
        part["risk_group"] = np.where(part["risk"] > threshold, "high", "low")
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def logrank_pvalue(groups: pd.DataFrame) -> float:
    """Log-rank test p-value between the ``low`` and ``high`` groups (NaN if one is empty)."""
    low = groups[groups["risk_group"] == "low"]
    high = groups[groups["risk_group"] == "high"]
    if low.empty or high.empty or (low["event"].sum() + high["event"].sum()) == 0:
        return float("nan")
    result = logrank_test(
        low["survival_time"],
        high["survival_time"],
        event_observed_A=low["event"],
        event_observed_B=high["event"],
    )
    return float(result.p_value)


def format_pvalue(p: float) -> str:
    """``p = 0.031``, ``p < 0.001`` or ``p = n/a``."""
    if not math.isfinite(p):
        return "p = n/a"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}"


def _plot_km_group(ax: Axes, rows: pd.DataFrame, group: str) -> None:
    label = f"{group} risk (n={len(rows)}, events={int(rows['event'].sum())})"
    fitter = KaplanMeierFitter()
    fitter.fit(rows["survival_time"], rows["event"], label=label)
    colour = _GROUP_COLOURS[group]
    curve = fitter.survival_function_.iloc[:, 0]
    band = fitter.confidence_interval_survival_function_
    ax.step(curve.index, curve.to_numpy(), where="post", color=colour, label=label)
    ax.fill_between(
        band.index,
        band.iloc[:, 0],
        band.iloc[:, 1],
        step="post",
        color=colour,
        alpha=0.15,
        linewidth=0,
    )
    censored = rows.loc[rows["event"] == 0, "survival_time"].to_numpy()
    if len(censored):
        at = fitter.survival_function_at_times(censored).to_numpy()
        ax.plot(censored, at, linestyle="none", marker="|", markersize=7, color=colour)


def km_figure(groups: pd.DataFrame) -> Figure:
    """Kaplan–Meier curves of the low / high predicted-risk groups, one panel per model.

    ``groups`` is the output of :func:`assign_risk_groups` (pooled test predictions of all folds).
    Each panel title gives the log-rank p-value.
    """
    models = sorted(groups["model"].unique()) if not groups.empty else []
    if not models:
        return message_figure("No survival predictions to plot.")
    fig, axes = _grid(len(models), panel_width=4.6, panel_height=3.6)
    for ax, model in zip(axes, models, strict=True):
        rows = groups[groups["model"] == model]
        for group in ("low", "high"):
            subset = rows[rows["risk_group"] == group]
            if not subset.empty:
                _plot_km_group(ax, subset, group)
        ax.set_title(f"{model} — log-rank {format_pvalue(logrank_pvalue(rows))}", fontsize=10)
        ax.set_xlabel("Time (months)")
        ax.set_ylabel("Survival probability")
        ax.set_ylim(0.0, 1.02)
        ax.set_xlim(left=0.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left", frameon=False)
    return fig


# --------------------------------------------------------------------------- grade


def pooled_test_rows(
    predictions: pd.DataFrame, task: str = "grade"
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per model: the labelled test rows of classification ``task`` pooled over folds, ``(y_true, probs)``."""
    pooled: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if predictions.empty or task not in predictions.columns or f"{task}_prob_0" not in predictions.columns:
        return pooled
    for model, rows in predictions.groupby("model", sort=True):
        # Files of models with different class counts share one frame: keep this model's columns.
        prob_columns = [
            column
            for column in probability_columns(rows.columns, task)
            if rows[column].notna().any()
        ]
        if len(prob_columns) < 2:
            continue
        test = rows[(rows["split"] == "test") & rows[task].notna()]
        test = test[test[prob_columns].notna().all(axis=1)]
        if test.empty:
            continue
        y_true = test[task].to_numpy(dtype=np.float64).astype(np.int64)
        pooled[str(model)] = (y_true, test[prob_columns].to_numpy(dtype=np.float64))
    return pooled


def roc_figure(
    predictions: pd.DataFrame, class_names: Sequence[str] | None = None, task: str = "grade"
) -> Figure:
    """One-vs-rest ROC curve per class of ``task`` on pooled test predictions, one panel per model.

    Classes that are absent (or the only class) among a model's test labels are left out; a
    two-class task shows the positive class only. The legend gives each class's pooled AUC.
    """
    pooled = pooled_test_rows(predictions, task)
    if not pooled:
        return message_figure(f"No {task} predictions to plot.")
    fig, axes = _grid(len(pooled), panel_width=4.2, panel_height=3.8)
    for ax, (model, (y_true, probs)) in zip(axes, pooled.items(), strict=True):
        n_classes = probs.shape[1]
        if class_names and len(class_names) == n_classes:
            names = [f"{task} {name}" for name in class_names]
        else:
            names = [f"class {index}" for index in range(n_classes)]
        for index in range(1 if n_classes == 2 else 0, n_classes):
            positive = y_true == index
            if positive.all() or not positive.any():
                continue
            fpr, tpr, _ = roc_curve(positive, probs[:, index])
            auc = roc_auc_score(positive, probs[:, index])
            ax.plot(
                fpr,
                tpr,
                color=_CLASS_COLOURS[index % len(_CLASS_COLOURS)],
                linewidth=1.6,
                label=f"{names[index]} vs rest (AUC {auc:.3f}, n+={int(positive.sum())})",
            )
        ax.plot([0, 1], [0, 1], linestyle="--", color="#999999", linewidth=0.8)
        ax.set_title(f"{model} (n={len(y_true)})", fontsize=10)
        ax.set_xlabel("False positive rate")
        ax.set_ylabel("True positive rate")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="lower right", frameon=False)
    return fig


# --------------------------------------------------------------------------- standalone files


def write_km_png(prediction_files: Sequence[Path], out_png: str | Path) -> None:
    """Write the Kaplan–Meier figure for ``prediction_files`` to ``out_png`` (always a PNG)."""
    groups = assign_risk_groups(read_predictions(prediction_files))
    save_figure(km_figure(groups), out_png)


def write_roc_png(
    prediction_files: Sequence[Path], out_png: str | Path, *, labels_json: str | Path | None = None
) -> None:
    """Write the ROC figure for ``prediction_files`` to ``out_png`` (always a PNG)."""
    predictions = read_predictions(prediction_files)
    class_names: list[str] | None = None
    if labels_json is not None and has_grade_task(predictions):
        try:
            n_classes = len(grade_probability_columns(predictions.columns))
        except HistofuseError:
            n_classes = None
        class_names = read_class_names(labels_json, n_classes)
    save_figure(roc_figure(predictions, class_names), out_png)


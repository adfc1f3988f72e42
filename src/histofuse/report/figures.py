"""Report figures beyond KM and ROC: confusion matrices, training curves, the missing-rate curve, the
modality ablation and the fold composition. Each takes plain tables and returns a :class:`matplotlib.figure.Figure`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from histofuse.errors import HistofuseError
from histofuse.report.plots import _grid, message_figure, new_figure

__all__ = [
    "MISSING_RATE_COLUMNS",
    "confusion_figure",
    "fold_composition_figure",
    "missing_rate_figure",
    "modality_ablation_figure",
    "read_modality_ablation",
    "read_histories",
    "read_missing_rate",
    "training_curves_figure",
]

log = logging.getLogger(__name__)

MISSING_RATE_COLUMNS = ("model", "fold", "rate", "auc")
_HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss")
_HISTORY_PATH = re.compile(r"fold(\d+)_history$")
_SPLIT_COLOURS = {"train": "#4c72b0", "val": "#dd8452", "test": "#55a868"}
_MODALITY_COLOURS = {"wsi": "#c44e52", "genomics": "#4c72b0", "clinical": "#55a868"}
_MODEL_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def confusion_figure(
    confusion: pd.DataFrame, task: str, class_names: Sequence[str] | None = None
) -> Figure:
    """Confusion matrices of ``task`` summed over folds, one panel per model (row-normalised shade).

    ``confusion`` has the columns ``model, task, fold, true, predicted, count``.
    """
    rows = confusion[confusion["task"] == task]
    models = sorted(rows["model"].astype(str).unique())
    if not models:
        return message_figure(f"No {task} predictions.")
    fig, axes = _grid(len(models), panel_width=3.6, panel_height=3.3)
    for ax, model in zip(axes, models, strict=True):
        subset = rows[rows["model"] == model]
        n = int(max(subset["true"].max(), subset["predicted"].max())) + 1
        counts = np.zeros((n, n), dtype=np.int64)
        summed = subset.groupby(["true", "predicted"])["count"].sum()
        for (true, predicted), count in summed.items():
            counts[int(true), int(predicted)] = int(count)
        totals = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
        ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(n):
            for j in range(n):
                colour = "white" if share[i, j] > 0.6 else "#222222"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour)
        names = list(class_names) if class_names and len(class_names) == n else list(map(str, range(n)))
        ax.set_xticks(range(n), names)
        ax.set_yticks(range(n), names)
        ax.set_xlabel("Predicted")
        ax.set_ylabel("True")
        ax.set_title(f"{model} (n={int(counts.sum())})", fontsize=10)
    return fig


def read_histories(paths: Sequence[Path]) -> pd.DataFrame:
    """Training histories ``{model}/fold{k}_history.tsv`` as one table with ``model`` and ``fold``.

    Columns ``epoch, train_loss, val_loss`` are required. The validation score the trainer monitors
    (``val_score``: the loss, AUC or c-index, per ``training.monitor``) is kept as ``val_metric``.
    """
    frames = []
    for raw in paths:
        path = Path(raw)
        match = _HISTORY_PATH.match(path.stem)
        if match is None:
            raise HistofuseError(
                "training history whose name does not say the fold",
                path=path,
                fix="name histories {results}/models/{model}/fold{k}_history.tsv",
            )
        try:
            frame = pd.read_csv(path, sep="\t")
        except (OSError, ValueError) as exc:
            raise HistofuseError(f"cannot read the training history: {exc}", path=path) from exc
        for column in _HISTORY_COLUMNS:
            if column not in frame.columns:
                raise HistofuseError("required column missing", path=path, column=column)
        if "val_score" in frame.columns and "val_metric" not in frame.columns:
            frame = frame.rename(columns={"val_score": "val_metric"})
        frames.append(frame.assign(model=path.parent.name, fold=int(match.group(1))))
    if not frames:
        return pd.DataFrame(columns=["model", "fold", *_HISTORY_COLUMNS])
    return pd.concat(frames, ignore_index=True, sort=False)


def training_curves_figure(histories: pd.DataFrame) -> Figure:
    """Per model: training (dashed) and validation (solid) loss per fold; validation metric beside.

    The second column of panels appears only when the histories carry ``val_metric``.
    """
    models = sorted(histories["model"].astype(str).unique()) if not histories.empty else []
    if not models:
        return message_figure("No training histories.")
    has_metric = "val_metric" in histories.columns and histories["val_metric"].notna().any()
    ncols = 2 if has_metric else 1
    fig = new_figure(5.0 * ncols, 2.8 * len(models))
    for row, model in enumerate(models):
        subset = histories[histories["model"] == model]
        ax = fig.add_subplot(len(models), ncols, row * ncols + 1)
        for index, (fold, rows) in enumerate(subset.groupby("fold", sort=True)):
            colour = _MODEL_COLOURS[index % len(_MODEL_COLOURS)]
            ax.plot(rows["epoch"], rows["train_loss"], linestyle="--", color=colour, linewidth=1)
            ax.plot(rows["epoch"], rows["val_loss"], color=colour, linewidth=1.4, label=f"fold {fold}")
        ax.set_title(f"{model}: loss (dashed train, solid validation)", fontsize=10)
        ax.set_xlabel("Epoch")
        ax.set_ylabel("Loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
        if has_metric:
            ax = fig.add_subplot(len(models), ncols, row * ncols + 2)
            for index, (fold, rows) in enumerate(subset.groupby("fold", sort=True)):
                colour = _MODEL_COLOURS[index % len(_MODEL_COLOURS)]
                ax.plot(rows["epoch"], rows["val_metric"], color=colour, label=f"fold {fold}")
            ax.set_title(f"{model}: validation metric", fontsize=10)
            ax.set_xlabel("Epoch")
            ax.grid(alpha=0.3)
    return fig


def read_missing_rate(path: Path) -> pd.DataFrame:
    """The missing-rate table (``model, fold, rate, auc``), checked."""
    try:
        frame = pd.read_csv(path, sep="\t", dtype={"model": str})
    except (OSError, ValueError) as exc:
        raise HistofuseError(f"cannot read the missing-rate table: {exc}", path=path) from exc
    for column in MISSING_RATE_COLUMNS:
        if column not in frame.columns:
            raise HistofuseError("required column missing", path=path, column=column)
    return frame


def missing_rate_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample sd of the AUC over folds per model and missing rate."""
    grouped = table.groupby(["model", "rate"], sort=True)["auc"]
    return pd.DataFrame(
        {"mean": grouped.mean(), "sd": grouped.std(ddof=1), "n_folds": grouped.count()}
    ).reset_index()


def missing_rate_figure(table: pd.DataFrame) -> Figure:
    """AUC against the missing-modality rate, one line per model: mean over folds ± 1 sd band."""
    if table.empty:
        return message_figure("No missing-rate results.")
    summary = missing_rate_summary(table)
    fig = new_figure(5.6, 3.8)
    ax = fig.add_subplot()
    for index, (model, rows) in enumerate(summary.groupby("model", sort=True)):
        colour = _MODEL_COLOURS[index % len(_MODEL_COLOURS)]
        mean, sd = rows["mean"].to_numpy(), rows["sd"].fillna(0.0).to_numpy()
        ax.plot(rows["rate"], mean, marker="o", color=colour, label=str(model))
        ax.fill_between(rows["rate"], mean - sd, mean + sd, color=colour, alpha=0.15, linewidth=0)
    ax.set_xlabel("Missing-modality rate at test time")
    ax.set_ylabel("AUC (mean ± sd over folds)")
    ax.set_xlim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return fig


def read_modality_ablation(path: Path) -> pd.DataFrame:
    """The modality-ablation table (:data:`histofuse.modality_ablation.ABLATION_COLUMNS`), checked."""
    from histofuse.modality_ablation import ABLATION_COLUMNS

    try:
        frame = pd.read_csv(path, sep="\t", dtype={"model": str, "task": str, "modality": str})
    except (OSError, ValueError) as exc:
        raise HistofuseError(f"cannot read the modality-ablation table: {exc}", path=path) from exc
    for column in ABLATION_COLUMNS:
        if column not in frame.columns:
            raise HistofuseError("required column missing", path=path, column=column)
    return frame


def modality_ablation_figure(table: pd.DataFrame) -> Figure:
    """Metric drop per model (rows) and permuted modality (bars) with its 95 % interval; a panel per task."""
    if table.empty:
        return message_figure("No multi-modal model to ablate.")
    tasks = sorted(table["task"].unique())
    models = sorted(table["model"].unique())
    fig, axes = _grid(len(tasks), panel_width=4.6, panel_height=0.9 + 0.45 * len(models))
    modalities = [m for m in _MODALITY_COLOURS if m in set(table["modality"])]
    width = 0.8 / max(len(modalities), 1)
    for ax, task in zip(axes, tasks, strict=True):
        rows = table[table["task"] == task]
        for k, modality in enumerate(modalities):
            part = rows[rows["modality"] == modality].set_index("model").reindex(models)
            y = np.arange(len(models)) + (k - (len(modalities) - 1) / 2) * width
            drop = part["drop"].to_numpy(dtype=float)
            low = np.nan_to_num(drop - part["ci_low"].to_numpy(dtype=float))
            high = np.nan_to_num(part["ci_high"].to_numpy(dtype=float) - drop)
            ax.barh(y, drop, height=width, color=_MODALITY_COLOURS[modality], label=modality,
                    xerr=np.vstack([low, high]), error_kw={"elinewidth": 0.8, "capsize": 2})
        metric = str(rows["metric"].iloc[0]) if not rows.empty else ""
        ax.axvline(0.0, color="#333333", linewidth=0.8)
        ax.set_yticks(np.arange(len(models)), models, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"{metric} drop when permuted (95 % CI)", fontsize=8)
        ax.set_title(task, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].legend(fontsize=8, frameon=False, loc="lower right")
    return fig


def fold_composition_figure(folds: pd.DataFrame, labels: pd.Series | None = None) -> Figure:
    """Patients per fold and split (stacked bars); beside it, the label mix of each fold's test part.

    ``folds`` has ``patient_id, fold, split``; ``labels`` maps patient id to a class name.
    """
    if folds.empty:
        return message_figure("No fold assignment.")
    has_labels = labels is not None and not labels.empty
    fig = new_figure(5.0 * (2 if has_labels else 1), 3.2)
    ax = fig.add_subplot(1, 2 if has_labels else 1, 1)
    counts = folds.groupby(["fold", "split"]).size().unstack(fill_value=0)
    fold_ids = list(counts.index)
    bottom = np.zeros(len(fold_ids))
    for split in [s for s in ("train", "val", "test") if s in counts.columns] + sorted(
        set(counts.columns) - {"train", "val", "test"}
    ):
        values = counts[split].to_numpy()
        ax.bar(range(len(fold_ids)), values, bottom=bottom, label=split,
               color=_SPLIT_COLOURS.get(split, "#999999"))
        bottom += values
    ax.set_xticks(range(len(fold_ids)), [f"fold {fold}" for fold in fold_ids])
    ax.set_ylabel("Patients")
    ax.set_title("Patients per split", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    if has_labels:
        assert labels is not None
        ax = fig.add_subplot(1, 2, 2)
        test = folds[folds["split"] == "test"].assign(
            label=lambda frame: frame["patient_id"].astype(str).map(labels).fillna("missing")
        )
        mix = test.groupby(["fold", "label"]).size().unstack(fill_value=0)
        bottom = np.zeros(len(mix))
        for index, label in enumerate(mix.columns):
            values = mix[label].to_numpy()
            ax.bar(range(len(mix)), values, bottom=bottom, label=str(label),
                   color=_MODEL_COLOURS[index % len(_MODEL_COLOURS)])
            bottom += values
        ax.set_xticks(range(len(mix)), [f"fold {fold}" for fold in mix.index])
        ax.set_title("Test part by label", fontsize=10)
        ax.legend(fontsize=8, frameon=False)
    return fig

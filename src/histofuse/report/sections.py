"""Report sections for the evaluation: per-task model comparison, training, attention, robustness,
exclusions, input notes, data preparation and extraction throughput.

Each ``*_fragment`` function reads its inputs and returns the data of one part of the page with the
template that draws it (:class:`~histofuse.report.markup.Fragment`); a section whose input is absent
says what would fill it. ``modality_section``, ``input_notes_section`` and ``preparation_section``
render their part alone, as HTML.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError
from histofuse.report import figures, plots
from histofuse.report.markup import (
    Fragment,
    MetricCell,
    Table,
    fmt_count,
    fmt_number,
    note,
    picture,
    plot,
)

__all__ = [
    "METRIC_NAMES",
    "attention_fragment",
    "exclusions_fragment",
    "input_notes_fragment",
    "input_notes_section",
    "modality_fragment",
    "modality_section",
    "preparation_fragment",
    "preparation_notes",
    "preparation_section",
    "robustness_fragment",
    "task_fragment",
    "throughput_fragment",
    "training_fragment",
]

log = logging.getLogger(__name__)

METRIC_NAMES = {
    "cindex": "Harrell's C",
    "uno_cindex": "Uno's C",
    "td_auc": "Time-dependent AUC",
    "ibs": "Integrated Brier (Cox on risk)",
    "ibs_km": "Integrated Brier (KM reference)",
    "auc": "AUC (macro OvR)",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "f1_macro": "Macro F1",
}
EXCLUSION_COLUMNS = ("slide", "stage", "reason", "fix")


def _metric_order(metrics: Sequence[str]) -> list[str]:
    rank = {name: index for index, name in enumerate(METRIC_NAMES)}
    return sorted(set(metrics), key=lambda name: (rank.get(name, len(rank)), name))


def _summary_cell(row: pd.Series) -> MetricCell:
    """Mean ± sd, the number of folds and (when known) the bootstrap interval of the mean."""
    mean, sd = float(row["mean"]), float(row["sd"])
    text = fmt_number(mean) if not math.isfinite(sd) else f"{fmt_number(mean)} ± {fmt_number(sd)}"
    low, high = float(row.get("ci_low", np.nan)), float(row.get("ci_high", np.nan))
    interval = (
        f"[{fmt_number(low)}, {fmt_number(high)}]" if math.isfinite(low) and math.isfinite(high) else None
    )
    return MetricCell(text=text, count=f"({int(row['n_folds'])})", interval=interval)


def _summary_table(summary: pd.DataFrame) -> Table:
    metrics = _metric_order(summary["metric"].astype(str))
    indexed = summary.set_index(["model", "metric"])
    rows: list[list[str | MetricCell]] = []
    for model in sorted(summary["model"].astype(str).unique()):
        row: list[str | MetricCell] = [model]
        for metric in metrics:
            key = (model, metric)
            row.append(_summary_cell(indexed.loc[key]) if key in indexed.index else "—")
        rows.append(row)
    header = ["Model", *(METRIC_NAMES.get(metric, metric) for metric in metrics)]
    return Table.of(header, rows, numeric=range(1, len(header)))


def _folds_table(folds: pd.DataFrame) -> Table:
    fold_ids = sorted(folds["fold"].unique())
    indexed = folds.set_index(["model", "metric", "fold"])
    rows: list[list[str | MetricCell]] = []
    for model in sorted(folds["model"].astype(str).unique()):
        for metric in _metric_order(folds.loc[folds["model"] == model, "metric"].astype(str)):
            row: list[str | MetricCell] = [model, METRIC_NAMES.get(metric, metric)]
            for fold in fold_ids:
                key = (model, metric, fold)
                if key in indexed.index:
                    record = indexed.loc[key]
                    row.append(MetricCell(text=fmt_number(float(record["value"])), count=f"n={int(record['n'])}"))
                else:
                    row.append("—")
            rows.append(row)
    header = ["Model", "Metric", *(f"fold {fold}" for fold in fold_ids)]
    return Table.of(header, rows, numeric=range(2, len(header)))


def _comparison_table(comparison: pd.DataFrame) -> Table:
    rows = [
        [
            METRIC_NAMES.get(str(record.metric), str(record.metric)),
            f"{record.model_a} − {record.model_b}",
            str(int(record.n_folds)),
            fmt_number(float(record.mean_diff)),
            plots.format_pvalue(float(record.p_ttest)),
            plots.format_pvalue(float(record.p_wilcoxon)),
        ]
        for record in comparison.itertuples(index=False)
    ]
    header = ["Metric", "Models (a − b)", "Folds", "Mean difference", "Paired t-test", "Wilcoxon"]
    return Table.of(header, rows, numeric=(2, 3))


def task_fragment(
    task: str,
    *,
    summary: pd.DataFrame,
    folds: pd.DataFrame,
    comparison: pd.DataFrame | None,
    n_boot: int | None,
) -> Fragment:
    """One task's metrics: models side by side, per-fold values and the paired comparison."""
    summary = summary[summary["task"] == task]
    folds = folds[folds["task"] == task]
    task_comparison = comparison[comparison["task"] == task] if comparison is not None else pd.DataFrame()
    return Fragment(
        "task.html.j2",
        {
            "task": task,
            "replicates": f"{n_boot} replicates" if n_boot else "replicates",
            "summary": None if summary.empty else _summary_table(summary),
            "folds": None if folds.empty else _folds_table(folds),
            "comparison": None if task_comparison.empty else _comparison_table(task_comparison),
        },
    )


def training_fragment(history_files: Sequence[Path]) -> Fragment:
    """Training and validation loss per epoch (and validation metric when recorded)."""
    histories = figures.read_histories(history_files)
    if histories.empty:
        return note("Training curves appear once models are trained (models/{model}/fold{k}_history.tsv).")
    curves = plot(figures.training_curves_figure(histories), "Training curves", "training")
    return Fragment("training.html.j2", {"curves": curves})


def attention_fragment(attention_pngs: Sequence[Path]) -> Fragment:
    """The attention heatmaps written by the attention rule."""
    if not attention_pngs:
        return note(
            "Attention heatmaps appear when abmil is among training.models (report.attention_slides "
            "slides, each scored by the fold whose test part holds its patient)."
        )
    heatmaps = []
    for path in sorted(Path(p) for p in attention_pngs):
        try:
            png = path.read_bytes()
        except OSError as exc:
            log.warning("%s: cannot read attention image (%s)", path, exc)
            continue
        image = picture(png, f"Attention of {path.stem}", css_class="plot attention")
        heatmaps.append({"picture": image, "caption": path.stem})
    return Fragment("attention.html.j2", {"heatmaps": heatmaps})


def _missing_rate_table(table: pd.DataFrame) -> Table:
    summary = figures.missing_rate_summary(table)
    rates = sorted(summary["rate"].unique())
    indexed = summary.set_index(["model", "rate"])
    rows = []
    for model in sorted(summary["model"].astype(str).unique()):
        row = [model]
        for rate in rates:
            if (model, rate) in indexed.index:
                record = indexed.loc[(model, rate)]
                sd = float(record["sd"])
                mean = fmt_number(float(record["mean"]))
                row.append(mean if not math.isfinite(sd) else f"{mean} ± {fmt_number(sd)}")
            else:
                row.append("—")
        rows.append(row)
    header = ["Model", *(f"rate {rate:g}" for rate in rates)]
    return Table.of(header, rows, numeric=range(1, len(header)))


def robustness_fragment(missing_rate_tsv: Path | None) -> Fragment:
    """AUC against the rate of missing modalities at test time (``metrics/missing_rate.tsv``)."""
    if missing_rate_tsv is None or not Path(missing_rate_tsv).exists():
        return note(
            "The missing-modality curve appears when missing_rate.models names trained models "
            "(e.g. bidistill, mm_impute, abmil): each is then scored with the clinical data of a "
            "share of test patients withheld, in metrics/missing_rate.tsv."
        )
    table = figures.read_missing_rate(Path(missing_rate_tsv))
    if table.empty:
        return note("The missing-rate table is empty.")
    curve = plot(figures.missing_rate_figure(table), "AUC against missing-modality rate", "missing-rate")
    return Fragment("robustness.html.j2", {"curve": curve, "table": _missing_rate_table(table)})


def modality_fragment(ablation_tsv: Path | None) -> Fragment:
    """Metric drop with one modality permuted at test time (``metrics/modality_ablation.tsv``), per task."""
    if ablation_tsv is None or not Path(ablation_tsv).exists():
        return note(
            "The modality ablation appears when a trained model reads two or more modalities and "
            "evaluation.ablation_repeats is above 0: each such model is then scored with one "
            "modality permuted across the test patients, in metrics/modality_ablation.tsv."
        )
    table = figures.read_modality_ablation(Path(ablation_tsv))
    if table.empty:
        return note("No trained model reads two or more modalities: nothing to ablate.")
    header = ["Model", "Permuted", "Metric", "Full", "Permuted", "Drop", "95 % CI"]
    tasks = []
    for task in sorted(table["task"].unique()):
        rows = table[table["task"] == task]
        body = [
            [r.model, r.modality, r.metric, fmt_number(r.full), fmt_number(r.permuted), fmt_number(r.drop),
             f"{fmt_number(r.ci_low)} – {fmt_number(r.ci_high)}"]
            for r in rows.itertuples(index=False)
        ]
        figure = figures.modality_ablation_figure(rows)
        tasks.append(
            {
                "name": task,
                "figure": plot(figure, f"modality ablation, {task}", "modality-ablation"),
                "table": Table.of(header, body, numeric=range(3, 7)),
            }
        )
    return Fragment("modality.html.j2", {"tasks": tasks})


def modality_section(ablation_tsv: Path | None) -> str:
    """:func:`modality_fragment` as HTML."""
    return modality_fragment(ablation_tsv).render()


def exclusions_fragment(exclusions_tsv: Path | None) -> Fragment:
    """Slides skipped under ``on_error: skip`` (``exclusions.tsv``: slide, stage, reason, fix)."""
    if exclusions_tsv is None or not Path(exclusions_tsv).exists():
        return note("No slide was excluded: exclusions.tsv lists slides skipped under on_error: skip.")
    try:
        table = pd.read_csv(exclusions_tsv, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise HistofuseError(f"cannot read the exclusions table: {exc}", path=exclusions_tsv) from exc
    for column in EXCLUSION_COLUMNS:
        if column not in table.columns:
            raise HistofuseError("required column missing", path=exclusions_tsv, column=column)
    if table.empty:
        return note("No slide was excluded.")
    rows = [[str(value) for value in record] for record in table[list(EXCLUSION_COLUMNS)].itertuples(index=False)]
    return Fragment(
        "exclusions.html.j2",
        {
            "facts": [("Slides excluded", fmt_count(table["slide"].nunique()))],
            "table": Table.of(["Slide", "Stage", "Reason", "Fix"], rows),
        },
    )


def _left_out_tables(prediction_files: Sequence[Path]) -> tuple[Table, Table] | None:
    """Per model and reason, the patients left out; and the first 200 of them one by one."""
    from histofuse.left_out import read_left_out

    frames = []
    for path in prediction_files:
        frame = read_left_out(Path(path))
        if not frame.empty:
            frames.append(frame.assign(model=Path(path).parent.name, fold=Path(path).stem.removeprefix("fold")))
    if not frames:
        return None
    left_out = pd.concat(frames, ignore_index=True)
    counts = left_out.groupby(["model", "reason"]).agg(
        patients=("patient_id", "nunique"), test=("split", lambda s: int((s == "test").sum()))
    )
    rows = [[model, reason, fmt_count(r.patients), fmt_count(r.test)] for (model, reason), r in counts.iterrows()]
    columns = ["model", "fold", "patient_id", "split", "reason"]
    shown = [[str(value) for value in row] for row in left_out[columns].itertuples(index=False)]
    return (
        Table.of(["Model", "Why", "Patients left out", "of them test patients (all folds)"], rows),
        Table.of(["Model", "Fold", "Patient", "Split", "Why"], shown[:200]),
    )


def input_notes_fragment(notes: Sequence[str], prediction_files: Sequence[Path]) -> Fragment:
    """What the run changed in or left out of the input: the notes of ``tables/notes.tsv`` (ids
    stripped of whitespace, rows of unknown patients…) and, per model, the patients it left out."""
    left_out = _left_out_tables(prediction_files)
    return Fragment(
        "input_notes.html.j2",
        {
            "notes": Table.of(["Note on the input tables"], [[str(text)] for text in notes]) if notes else None,
            "left_out_counts": left_out[0] if left_out else None,
            "left_out_patients": left_out[1] if left_out else None,
        },
    )


def input_notes_section(notes: Sequence[str], prediction_files: Sequence[Path]) -> str:
    """:func:`input_notes_fragment` as HTML."""
    return input_notes_fragment(notes, prediction_files).render()


def _benchmark_seconds(folder: Path) -> dict[str, float]:
    seconds = {}
    for path in sorted(folder.glob("*.tsv")):
        try:
            frame = pd.read_csv(path, sep="\t")
            seconds[path.stem] = float(frame["s"].iloc[-1])
        except (OSError, ValueError, KeyError, IndexError) as exc:
            log.warning("%s: cannot read benchmark (%s)", path, exc)
    return seconds


def _throughput_row(name: str, seconds: Mapping[str, float], tiles: Mapping[str, int | None]) -> list[str]:
    counted = {slide: tiles.get(slide) for slide in seconds}
    n_tiles = sum(count for count in counted.values() if count)
    with_tiles = sum(seconds[slide] for slide, count in counted.items() if count)
    return [
        name,
        fmt_count(len(seconds)),
        f"{sum(seconds.values()):.1f}",
        f"{float(np.median(list(seconds.values()))):.1f}",
        f"{n_tiles / with_tiles:.1f}" if with_tiles > 0 and n_tiles else "n/a",
    ]


def throughput_fragment(
    benchmarks_dir: Path | None, encoder: str | None, tiles: Mapping[str, int | None]
) -> Fragment:
    """Wall time per slide of tiling and extraction (Snakemake benchmarks) and tiles per second."""
    if benchmarks_dir is None or not Path(benchmarks_dir).is_dir():
        return note("Throughput appears once the tile and extraction jobs have written their benchmarks.")
    stages = [("Tiling (mask + tiles)", Path(benchmarks_dir) / "tile")]
    if encoder:
        stages.append((f"Feature extraction ({encoder})", Path(benchmarks_dir) / "extract_features" / encoder))
    rows = []
    for name, folder in stages:
        seconds = _benchmark_seconds(folder)
        if seconds:
            rows.append(_throughput_row(name, seconds, tiles))
    if not rows:
        return note("No tile or extraction benchmarks found (features may be precomputed).")
    header = ["Stage", "Slides", "Total s", "Median s / slide", "Tiles / s"]
    return Fragment("throughput.html.j2", {"table": Table.of(header, rows, numeric=(1, 2, 3, 4))})


def preparation_notes(labels_json: Path, preprocessing_files: Sequence[Path]) -> list[tuple[str, str]]:
    """(stage, note) pairs: what reading the tables and each fold's preprocessing changed in the values.

    A preprocessing note shared by several folds is listed once, with the folds it concerns.
    """
    import json

    notes: list[tuple[str, str]] = []
    if Path(labels_json).is_file():
        notes += [("prepare_tables", str(n)) for n in json.loads(Path(labels_json).read_text()).get("preparation", [])]
    folds_of: dict[str, list[str]] = {}
    for path in preprocessing_files:
        data = json.loads(Path(path).read_text())
        for text in data.get("notes", []):
            folds_of.setdefault(str(text), []).append(str(data.get("fold")))
    notes += [(f"preprocess (fold {', '.join(folds)})", text) for text, folds in folds_of.items()]
    return notes


def preparation_fragment(labels_json: Path, preprocessing_files: Sequence[Path]) -> Fragment:
    """What was done to the user's values on the way in (see :func:`preparation_notes`)."""
    notes = preparation_notes(labels_json, preprocessing_files)
    if not notes:
        return note(
            "Nothing to note: values were changed only as the cohort format documents (README, \"Cohort formats\") "
            "and by the configured preprocessing."
        )
    table = Table.of(["Stage", "What was done"], [[stage, text] for stage, text in notes])
    return Fragment("preparation.html.j2", {"table": table})


def preparation_section(labels_json: Path, preprocessing_files: Sequence[Path]) -> str:
    """:func:`preparation_fragment` as HTML."""
    return preparation_fragment(labels_json, preprocessing_files).render()

"""Report sections for the evaluation: per-task model comparison, training, attention, robustness,
exclusions and extraction throughput. Each returns an HTML fragment; a section whose input is
absent says what would fill it.
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
from histofuse.report.markup import _esc, _facts, _fmt, _fmt_count, _img, _note, _table

__all__ = [
    "METRIC_NAMES",
    "attention_section",
    "exclusions_section",
    "input_notes_section",
    "modality_section",
    "preparation_section",
    "robustness_section",
    "task_section",
    "throughput_block",
    "training_section",
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


def _png(fig_png: bytes, alt: str, css: str) -> str:
    return _img(fig_png, alt, css_class=f"plot {css}")


def _figure(fig: object, alt: str, css: str) -> str:
    return _png(plots.fig_to_png_bytes(fig), alt, css)  # type: ignore[arg-type]


def _metric_order(metrics: Sequence[str]) -> list[str]:
    rank = {name: index for index, name in enumerate(METRIC_NAMES)}
    return sorted(set(metrics), key=lambda name: (rank.get(name, len(rank)), name))


def _cell(row: pd.Series) -> str:
    mean, sd = float(row["mean"]), float(row["sd"])
    text = _fmt(mean) if not math.isfinite(sd) else f"{_fmt(mean)} ± {_fmt(sd)}"
    low, high = float(row.get("ci_low", np.nan)), float(row.get("ci_high", np.nan))
    interval = (
        f'<br><span class="ci">[{_esc(_fmt(low))}, {_esc(_fmt(high))}]</span>'
        if math.isfinite(low) and math.isfinite(high)
        else ""
    )
    return f'{_esc(text)}<span class="n">({int(row["n_folds"])})</span>{interval}'


def _summary_table(summary: pd.DataFrame) -> str:
    metrics = _metric_order(summary["metric"].astype(str))
    indexed = summary.set_index(["model", "metric"])
    rows = []
    for model in sorted(summary["model"].astype(str).unique()):
        row = [_esc(model)]
        for metric in metrics:
            row.append(_cell(indexed.loc[(model, metric)]) if (model, metric) in indexed.index else "—")
        rows.append(row)
    header = ["Model", *(METRIC_NAMES.get(metric, metric) for metric in metrics)]
    return _table(header, rows, numeric=range(1, len(header)), raw=True)


def _folds_table(folds: pd.DataFrame) -> str:
    fold_ids = sorted(folds["fold"].unique())
    indexed = folds.set_index(["model", "metric", "fold"])
    rows = []
    for model in sorted(folds["model"].astype(str).unique()):
        for metric in _metric_order(folds.loc[folds["model"] == model, "metric"].astype(str)):
            row = [_esc(model), _esc(METRIC_NAMES.get(metric, metric))]
            for fold in fold_ids:
                key = (model, metric, fold)
                if key in indexed.index:
                    record = indexed.loc[key]
                    row.append(
                        f'{_esc(_fmt(float(record["value"])))}<span class="n">n={int(record["n"])}</span>'
                    )
                else:
                    row.append("—")
            rows.append(row)
    header = ["Model", "Metric", *(f"fold {fold}" for fold in fold_ids)]
    return _table(header, rows, numeric=range(2, len(header)), raw=True)


def _comparison_table(comparison: pd.DataFrame) -> str:
    rows = []
    for record in comparison.itertuples(index=False):
        rows.append(
            [
                METRIC_NAMES.get(str(record.metric), str(record.metric)),
                f"{record.model_a} − {record.model_b}",
                str(int(record.n_folds)),
                _fmt(float(record.mean_diff)),
                plots.format_pvalue(float(record.p_ttest)),
                plots.format_pvalue(float(record.p_wilcoxon)),
            ]
        )
    header = ["Metric", "Models (a − b)", "Folds", "Mean difference", "Paired t-test", "Wilcoxon"]
    return _table(header, rows, numeric=(2, 3))


def task_section(
    task: str,
    *,
    summary: pd.DataFrame,
    folds: pd.DataFrame,
    comparison: pd.DataFrame | None,
    figures_html: Sequence[str],
    n_boot: int | None,
) -> str:
    """One task: models side by side, per-fold values, paired comparison and the task's figures."""
    summary = summary[summary["task"] == task]
    folds = folds[folds["task"] == task]
    parts = []
    if summary.empty:
        parts.append(_note(f"No model was evaluated on {task}."))
    else:
        boot = f"{n_boot} replicates" if n_boot else "replicates"
        parts += [
            _note(
                "Test-set metrics across cross-validation folds: mean ± sample standard deviation "
                "(folds in brackets); below, the 95 % percentile bootstrap interval of the fold mean "
                f"({boot} resampling the test patients within each fold). Higher is better, except "
                "the integrated Brier scores (lower is better; the Kaplan–Meier reference is the "
                "no-information score)."
            ),
            _summary_table(summary),
        ]
        if not folds.empty:
            parts.append(
                "<details><summary>Per-fold values</summary>" + _folds_table(folds) + "</details>"
            )
        task_comparison = (
            comparison[comparison["task"] == task] if comparison is not None else pd.DataFrame()
        )
        if task_comparison.empty:
            parts.append(
                _note("A paired comparison of models across folds appears when two or more models are trained.")
            )
        else:
            parts += [
                "<h3>Paired comparison across folds</h3>",
                _comparison_table(task_comparison),
                _note(
                    "Tests on the per-fold metric of the folds both models completed; with k folds "
                    "the smallest two-sided Wilcoxon p-value is 2/2^k (0.0625 for 5 folds)."
                ),
            ]
    parts.extend(figures_html)
    return "\n".join(parts)


def training_section(history_files: Sequence[Path]) -> str:
    """Training and validation loss per epoch (and validation metric when recorded)."""
    histories = figures.read_histories(history_files)
    if histories.empty:
        return _note("Training curves appear once models are trained (models/{model}/fold{k}_history.tsv).")
    return "\n".join(
        [
            _note("Loss per epoch of every fold; the checkpoint kept is the epoch of lowest validation loss."),
            _figure(figures.training_curves_figure(histories), "Training curves", "training"),
        ]
    )


def attention_section(attention_pngs: Sequence[Path]) -> str:
    """The attention heatmaps written by the attention rule."""
    if not attention_pngs:
        return _note(
            "Attention heatmaps appear when abmil is among training.models (report.attention_slides "
            "slides, each scored by the fold whose test part holds its patient)."
        )
    images = []
    for path in sorted(Path(p) for p in attention_pngs):
        try:
            images.append(
                f"<figure>{_png(path.read_bytes(), f'Attention of {path.stem}', 'attention')}"
                f"<figcaption>{_esc(path.stem)}</figcaption></figure>"
            )
        except OSError as exc:
            log.warning("%s: cannot read attention image (%s)", path, exc)
    return "\n".join(
        [
            _note(
                "Tile attention of the abmil model (min–max scaled within each slide) over the "
                "slide thumbnail, and the four tiles with the highest attention."
            ),
            '<div class="wide">' + "\n".join(images) + "</div>",
        ]
    )


def robustness_section(missing_rate_tsv: Path | None) -> str:
    """AUC against the rate of missing modalities at test time (``metrics/missing_rate.tsv``)."""
    if missing_rate_tsv is None or not Path(missing_rate_tsv).exists():
        return _note(
            "The missing-modality curve appears when missing_rate.models names trained models "
            "(e.g. bidistill, mm_impute, abmil): each is then scored with the clinical data of a "
            "share of test patients withheld, in metrics/missing_rate.tsv."
        )
    table = figures.read_missing_rate(Path(missing_rate_tsv))
    if table.empty:
        return _note("The missing-rate table is empty.")
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
                mean = _fmt(float(record["mean"]))
                row.append(mean if not math.isfinite(sd) else f"{mean} ± {_fmt(sd)}")
            else:
                row.append("—")
        rows.append(row)
    header = ["Model", *(f"rate {rate:g}" for rate in rates)]
    return "\n".join(
        [
            _note("Test AUC as a growing share of patients lose a modality at test time: mean ± sd over folds."),
            _figure(figures.missing_rate_figure(table), "AUC against missing-modality rate", "missing-rate"),
            _table(header, rows, numeric=range(1, len(header))),
        ]
    )


def modality_section(ablation_tsv: Path | None) -> str:
    """Metric drop with one modality permuted at test time (``metrics/modality_ablation.tsv``), per task."""
    if ablation_tsv is None or not Path(ablation_tsv).exists():
        return _note(
            "The modality ablation appears when a trained model reads two or more modalities and "
            "evaluation.ablation_repeats is above 0: each such model is then scored with one "
            "modality permuted across the test patients, in metrics/modality_ablation.tsv."
        )
    table = figures.read_modality_ablation(Path(ablation_tsv))
    if table.empty:
        return _note("No trained model reads two or more modalities: nothing to ablate.")
    blocks = [
        _note(
            "Test metric of each multi-modal model with one modality's inputs permuted across the "
            "test patients of each fold (mean over folds and permutations), and the drop from the "
            "unpermuted metric with a 95 % bootstrap interval. A drop near 0: the model does not "
            "use that modality."
        )
    ]
    for task in sorted(table["task"].unique()):
        rows = table[table["task"] == task]
        blocks.append(f"<h3>{_esc(task)}</h3>")
        blocks.append(_figure(figures.modality_ablation_figure(rows), f"modality ablation, {task}", "modality-ablation"))
        body = [
            [r.model, r.modality, r.metric, _fmt(r.full), _fmt(r.permuted), _fmt(r.drop), f"{_fmt(r.ci_low)} – {_fmt(r.ci_high)}"]
            for r in rows.itertuples(index=False)
        ]
        header = ["Model", "Permuted", "Metric", "Full", "Permuted", "Drop", "95 % CI"]
        blocks.append(_table(header, body, numeric=range(3, 7)))
    return "\n".join(blocks)


def exclusions_section(exclusions_tsv: Path | None) -> str:
    """Slides skipped under ``on_error: skip`` (``exclusions.tsv``: slide, stage, reason, fix)."""
    if exclusions_tsv is None or not Path(exclusions_tsv).exists():
        return _note("No slide was excluded: exclusions.tsv lists slides skipped under on_error: skip.")
    try:
        table = pd.read_csv(exclusions_tsv, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise HistofuseError(f"cannot read the exclusions table: {exc}", path=exclusions_tsv) from exc
    for column in EXCLUSION_COLUMNS:
        if column not in table.columns:
            raise HistofuseError("required column missing", path=exclusions_tsv, column=column)
    if table.empty:
        return _note("No slide was excluded.")
    rows = [[str(value) for value in record] for record in table[list(EXCLUSION_COLUMNS)].itertuples(index=False)]
    return "\n".join(
        [
            _facts([("Slides excluded", _fmt_count(table["slide"].nunique()))]),
            _table(["Slide", "Stage", "Reason", "Fix"], rows),
        ]
    )


def input_notes_section(notes: Sequence[str], prediction_files: Sequence[Path]) -> str:
    """What the run changed in or left out of the input: the notes of ``tables/notes.tsv`` (ids
    stripped of whitespace, rows of unknown patients…) and, per model, the patients it left out."""
    from histofuse.left_out import read_left_out

    frames = []
    for path in prediction_files:
        frame = read_left_out(Path(path))
        if not frame.empty:
            frames.append(frame.assign(model=Path(path).parent.name, fold=Path(path).stem.removeprefix("fold")))
    parts = []
    if notes:
        parts.append(_table(["Note on the input tables"], [[str(note)] for note in notes]))
    else:
        parts.append(_note("The input tables were read as written: no id was changed and no row was left out."))
    if frames:
        left_out = pd.concat(frames, ignore_index=True)
        counts = left_out.groupby(["model", "reason"]).agg(
            patients=("patient_id", "nunique"), test=("split", lambda s: int((s == "test").sum()))
        )
        rows = [[model, reason, _fmt_count(r.patients), _fmt_count(r.test)] for (model, reason), r in counts.iterrows()]
        parts.append(_note("Patients a model has no input for are neither trained on nor predicted by it."))
        parts.append(_table(["Model", "Why", "Patients left out", "of them test patients (all folds)"], rows))
        columns = ["model", "fold", "patient_id", "split", "reason"]
        shown = [[str(value) for value in row] for row in left_out[columns].itertuples(index=False)]
        parts.append(_table(["Model", "Fold", "Patient", "Split", "Why"], shown[:200]))
    else:
        parts.append(_note("Every model predicted every patient of its folds."))
    return "\n".join(parts)


def _benchmark_seconds(folder: Path) -> dict[str, float]:
    seconds = {}
    for path in sorted(folder.glob("*.tsv")):
        try:
            frame = pd.read_csv(path, sep="\t")
            seconds[path.stem] = float(frame["s"].iloc[-1])
        except (OSError, ValueError, KeyError, IndexError) as exc:
            log.warning("%s: cannot read benchmark (%s)", path, exc)
    return seconds


def throughput_block(
    benchmarks_dir: Path | None, encoder: str | None, tiles: Mapping[str, int | None]
) -> str:
    """Wall time per slide of tiling and extraction (Snakemake benchmarks) and tiles per second."""
    if benchmarks_dir is None or not Path(benchmarks_dir).is_dir():
        return _note("Throughput appears once the tile and extraction jobs have written their benchmarks.")
    stages = [("Tiling (mask + tiles)", Path(benchmarks_dir) / "tile")]
    if encoder:
        stages.append((f"Feature extraction ({encoder})", Path(benchmarks_dir) / "extract_features" / encoder))
    rows = []
    for name, folder in stages:
        seconds = _benchmark_seconds(folder)
        if not seconds:
            continue
        counted = {slide: tiles.get(slide) for slide in seconds}
        n_tiles = sum(count for count in counted.values() if count)
        with_tiles = sum(seconds[slide] for slide, count in counted.items() if count)
        total = sum(seconds.values())
        rows.append(
            [
                name,
                _fmt_count(len(seconds)),
                f"{total:.1f}",
                f"{float(np.median(list(seconds.values()))):.1f}",
                f"{n_tiles / with_tiles:.1f}" if with_tiles > 0 and n_tiles else "n/a",
            ]
        )
    if not rows:
        return _note("No tile or extraction benchmarks found (features may be precomputed).")
    return "\n".join(
        [
            "<h3>Throughput</h3>",
            _table(["Stage", "Slides", "Total s", "Median s / slide", "Tiles / s"], rows, numeric=(1, 2, 3, 4)),
            _note("Wall time of each slide's job from Snakemake's benchmark files, start-up included."),
        ]
    )


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
        for note in data.get("notes", []):
            folds_of.setdefault(str(note), []).append(str(data.get("fold")))
    notes += [(f"preprocess (fold {', '.join(folds)})", note) for note, folds in folds_of.items()]
    return notes


def preparation_section(labels_json: Path, preprocessing_files: Sequence[Path]) -> str:
    """What was done to the user's values on the way in (see :func:`preparation_notes`)."""
    notes = preparation_notes(labels_json, preprocessing_files)
    if not notes:
        return _note(
            "Nothing to note: values were changed only as the cohort format documents (README, \"Cohort formats\") "
            "and by the configured preprocessing."
        )
    return _table(["Stage", "What was done"], [[stage, note] for stage, note in notes])

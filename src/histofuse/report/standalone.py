"""The report's figures as PNG files, for `snakemake --report` (the HTML report inlines its own)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from histofuse.report import figures, plots

__all__ = ["write_figures"]


def write_figures(
    *,
    prediction_files: Sequence[Path],
    labels_json: Path,
    confusion_tsv: Path,
    history_files: Sequence[Path],
    folds_tsv: Path,
    patients: Path,
    out_km: Path,
    out_roc: Path,
    out_confusion: Path,
    out_training: Path,
    out_composition: Path,
) -> None:
    """Write KM, ROC, grade confusion, training-curve and fold-composition PNGs (atomically)."""
    plots.write_km_png(prediction_files, out_km)
    plots.write_roc_png(prediction_files, out_roc, labels_json=labels_json)
    confusion = pd.read_csv(confusion_tsv, sep="\t", dtype={"model": str, "task": str})
    names = plots.read_class_names_for(labels_json, "grade")
    plots.save_figure(figures.confusion_figure(confusion, "grade", names), out_confusion)
    plots.save_figure(
        figures.training_curves_figure(figures.read_histories(history_files)), out_training
    )
    folds = pd.read_csv(folds_tsv, sep="\t", dtype={"patient_id": str})
    table = pd.read_parquet(patients)
    labels = None
    if "grade" in table.columns:
        grade = table.set_index(table["patient_id"].astype(str))["grade"]
        labels = grade.map(
            lambda value: "missing"
            if pd.isna(value)
            else (names[int(value)] if 0 <= int(value) < len(names) else str(value))
        )
    plots.save_figure(figures.fold_composition_figure(folds, labels), out_composition)

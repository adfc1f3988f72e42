"""The self-contained HTML report: cohort, slide QC, features, results, plots and provenance.

Everything the page shows is inside the one file: images are base64 PNG data URIs, the style sheet
is inline, and there is no script. This module reads the inputs and prepares what each section
shows; the markup is in the Jinja2 templates of :mod:`histofuse.report.markup`, which escape all
text taken from inputs.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import io
import logging
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from lifelines import KaplanMeierFitter
from PIL import Image

import histofuse
from histofuse import h5layout
from histofuse.errors import HistofuseError
from histofuse.evaluate import (
    classification_tasks,
    grade_probability_columns,
    has_grade_task,
    has_survival_task,
    read_predictions,
)
from histofuse.io import write_text_atomic
from histofuse.notes import NOTES_FILE, read_notes
from histofuse.report import figures, plots, sections
from histofuse.report.markup import (
    Fragment,
    Section,
    Table,
    fmt_count,
    fmt_number,
    note,
    picture,
    plot,
    render_page,
)

__all__ = ["build_report"]

log = logging.getLogger(__name__)

MAX_THUMBNAILS = 48
THUMBNAIL_PX = 240
PROVENANCE_PACKAGES = (
    "torch",
    "numpy",
    "pandas",
    "snakemake",
    "openslide-python",
    "lifelines",
    "scikit-learn",
    "scikit-survival",
    "scipy",
    "h5py",
    "matplotlib",
)


# --------------------------------------------------------------------------- small helpers


def _decode_attr(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return _decode_attr(value.reshape(-1)[0])
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def _read_table(path: Path, kind: str) -> pd.DataFrame:
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t", dtype={"patient_id": str, "model": str})
    except (OSError, ValueError) as exc:
        raise HistofuseError(f"cannot read the {kind}: {exc}", path=path) from exc


def _require(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    for column in columns:
        if column not in frame.columns:
            raise HistofuseError("required column missing", path=path, column=column)


def _grade_label(value: Any, classes: Sequence[str]) -> str:
    """A grade value as a class name: class indices map through ``classes``."""
    if pd.isna(value):
        return "missing"
    if isinstance(value, str):  # already a class name
        return value
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        return str(value)
    if as_float.is_integer() and 0 <= int(as_float) < len(classes):
        return classes[int(as_float)]
    return str(value)


def _ordered_labels(labels: Iterable[str], classes: Sequence[str]) -> list[str]:
    present = set(labels)
    ordered = [name for name in classes if name in present]
    extra = sorted(present - set(classes) - {"missing"})
    return ordered + extra + (["missing"] if "missing" in present else [])


# --------------------------------------------------------------------------- cohort


def _median_followup(time: pd.Series, event: pd.Series) -> float:
    """Median follow-up by the reverse Kaplan–Meier method (censoring treated as the event)."""
    rows = pd.DataFrame({"time": time, "event": event}).dropna()
    if rows.empty:
        return float("nan")
    fitter = KaplanMeierFitter().fit(rows["time"].astype(float), 1 - rows["event"].astype(int))
    return float(fitter.median_survival_time_)


def _cohort_facts(patients: pd.DataFrame, slides: pd.DataFrame) -> list[tuple[str, str]]:
    facts = [
        ("Patients", fmt_count(len(patients))),
        ("Slides", fmt_count(len(slides))),
        ("Patients with a slide", fmt_count(slides["patient_id"].astype(str).nunique())),
    ]
    if "event" in patients and "survival_time" in patients:
        event = pd.to_numeric(patients["event"], errors="coerce")
        time = pd.to_numeric(patients["survival_time"], errors="coerce")
        known = event.notna() & time.notna()
        facts += [
            ("Events (deaths)", fmt_count(int((event[known] == 1).sum()))),
            ("Censored", fmt_count(int((event[known] == 0).sum()))),
            ("Survival missing", fmt_count(int((~known).sum()))),
            (
                "Median follow-up (reverse Kaplan–Meier)",
                f"{fmt_number(_median_followup(time[known], event[known]), 1)} months",
            ),
            ("Median observed time", f"{fmt_number(float(time[known].median()), 1)} months"),
        ]
    return facts


def _grade_table(patients: pd.DataFrame, classes: Sequence[str]) -> Table:
    counts = patients["grade_label"].value_counts()
    rows = [
        [label, fmt_count(int(counts[label])), f"{100 * counts[label] / len(patients):.1f}%"]
        for label in _ordered_labels(counts.index, classes)
    ]
    return Table.of(["Grade", "Patients", "Share"], rows, numeric=(1, 2))


def _fold_table(folds: pd.DataFrame, patients: pd.DataFrame, classes: Sequence[str]) -> tuple[Table, str]:
    """Patients per fold and split, and per grade (counts of the splits joined by `` / ``); the split names."""
    merged = folds.merge(patients[["patient_id", "grade_label"]], on="patient_id", how="left")
    merged["grade_label"] = merged["grade_label"].fillna("missing")
    splits = ["train", "val", "test"]
    splits += sorted(set(merged["split"]) - set(splits))
    fold_labels = _ordered_labels(merged["grade_label"], classes)
    size = merged.groupby(["fold", "split"]).size()
    by_grade = merged.groupby(["fold", "grade_label", "split"]).size()
    rows = []
    for fold in sorted(merged["fold"].unique()):
        row = [str(fold)] + [fmt_count(int(size.get((fold, split), 0))) for split in splits]
        row += [
            " / ".join(str(int(by_grade.get((fold, label, split), 0))) for split in splits)
            for label in fold_labels
        ]
        rows.append(row)
    split_names = " / ".join(splits)
    header = ["Fold", *splits, *(f"grade {label} ({split_names})" for label in fold_labels)]
    return Table.of(header, rows, numeric=range(1, len(header))), split_names


def _cohort_fragment(*, tables_dir: Path, folds_tsv: Path, classes: Sequence[str]) -> Fragment:
    patients_path = tables_dir / "patients.parquet"
    slides_path = tables_dir / "slides.parquet"
    patients = _read_table(patients_path, "patient table")
    _require(patients, ["patient_id"], patients_path)
    slides = _read_table(slides_path, "slide table")
    _require(slides, ["slide_id", "patient_id"], slides_path)
    folds = _read_table(Path(folds_tsv), "fold assignment")
    _require(folds, ["patient_id", "fold", "split"], Path(folds_tsv))

    patients = patients.assign(patient_id=patients["patient_id"].astype(str))
    grade = patients["grade"] if "grade" in patients else pd.Series(pd.NA, index=patients.index)
    patients = patients.assign(grade_label=[_grade_label(value, classes) for value in grade])
    folds = folds.assign(patient_id=folds["patient_id"].astype(str), split=folds["split"].astype(str))
    fold_table, split_names = _fold_table(folds, patients, classes)
    composition = figures.fold_composition_figure(folds, patients.set_index("patient_id")["grade_label"])
    return Fragment(
        "cohort.html.j2",
        {
            "facts": _cohort_facts(patients, slides),
            "grades": _grade_table(patients, classes),
            "folds": fold_table,
            "split_names": split_names,
            "composition": plot(composition, "Fold composition", "composition"),
        },
    )


# --------------------------------------------------------------------------- slides and features


@dataclass(frozen=True, kw_only=True)
class TileInfo:
    """Tile count and geometry of one slide."""

    slide_id: str
    n_tiles: int | None
    tile_px: str | None
    target_mpp: str | None


@dataclass(frozen=True, kw_only=True)
class FeatureInfo:
    """Encoder attributes of one slide's feature file."""

    slide_id: str
    encoder: str
    dim: str
    precision: str
    weights_sha256: str


def read_tile_info(path: Path) -> TileInfo:
    """Tile count (rows of ``coords``) and attributes of a tile file; ``None`` when unreadable."""
    try:
        n_tiles, attrs = h5layout.read_tile_count(path)
    except (OSError, KeyError) as exc:
        log.warning("%s: cannot read tiles (%s)", path, exc)
        return TileInfo(slide_id=path.stem, n_tiles=None, tile_px=None, target_mpp=None)
    return TileInfo(
        slide_id=path.stem,
        n_tiles=n_tiles,
        tile_px=_decode_attr(attrs[h5layout.TILE_PX]) if h5layout.TILE_PX in attrs else None,
        target_mpp=_decode_attr(attrs[h5layout.TARGET_MPP]) if h5layout.TARGET_MPP in attrs else None,
    )


def read_feature_info(path: Path) -> FeatureInfo:
    """Encoder attributes of a features file (``unknown`` for what cannot be read)."""
    attrs: dict[str, Any] = {}
    try:
        attrs = h5layout.read_attrs(path)
    except OSError as exc:
        log.warning("%s: cannot read features (%s)", path, exc)

    def attr(name: str) -> str:
        return _decode_attr(attrs[name]) if name in attrs else "unknown"

    return FeatureInfo(
        slide_id=path.stem,
        encoder=attr(h5layout.ENCODER) if h5layout.ENCODER in attrs else path.parent.name,
        dim=attr(h5layout.DIM),
        precision=attr(h5layout.PRECISION),
        weights_sha256=attr(h5layout.WEIGHTS_SHA256),
    )


def _thumbnail_png(path: Path) -> bytes | None:
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        rgb.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        buffer = io.BytesIO()
        rgb.save(buffer, format="PNG", optimize=True)
        return buffer.getvalue()
    except (OSError, ValueError) as exc:
        log.warning("%s: cannot read QC image (%s)", path, exc)
        return None


def _distinct(values: Iterable[str | None]) -> str:
    found = sorted({value for value in values if value is not None})
    return ", ".join(found) if found else "unknown"


def _thumbnail(path: Path, info: TileInfo | None) -> dict[str, Any]:
    """One slide's QC thumbnail (``picture`` is ``None`` when the image is unreadable) and tile count."""
    tiles = f"{fmt_count(info.n_tiles)} tiles" if info and info.n_tiles is not None else "tiles: n/a"
    png = _thumbnail_png(path)
    image = picture(png, f"QC of {path.stem}") if png else None
    return {"slide_id": path.stem, "tiles": tiles, "picture": image}


def _qc_fragment(qc_pngs: Sequence[Path], tiles: Mapping[str, TileInfo]) -> Fragment:
    ordered = sorted((Path(path) for path in qc_pngs), key=lambda path: path.stem)
    counts = [info.n_tiles for info in tiles.values() if info.n_tiles is not None]
    facts = [
        ("Slides with QC images", fmt_count(len(ordered))),
        ("Slides with tiles", fmt_count(len(counts))),
        ("Tiles in total", fmt_count(sum(counts))),
        ("Tiles per slide (median)", fmt_count(int(np.median(counts))) if counts else "n/a"),
        ("Tile size (px)", _distinct(info.tile_px for info in tiles.values())),
        ("Tile resolution (µm/px)", _distinct(info.target_mpp for info in tiles.values())),
    ]
    thumbnails = [_thumbnail(path, tiles.get(path.stem)) for path in ordered[:MAX_THUMBNAILS]]
    return Fragment(
        "slides_qc.html.j2",
        {
            "facts": facts,
            "thumbnails": thumbnails,
            "shown": MAX_THUMBNAILS,
            "omitted": len(ordered) - MAX_THUMBNAILS,
        },
    )


def _features_fragment(feature_infos: Sequence[FeatureInfo], tiles: Mapping[str, TileInfo]) -> Fragment:
    if not feature_infos:
        return note("No feature files.")
    groups: dict[tuple[str, str, str, str], list[FeatureInfo]] = {}
    for info in feature_infos:
        key = (info.encoder, info.dim, info.precision, info.weights_sha256)
        groups.setdefault(key, []).append(info)
    rows = []
    for (encoder, dim, precision, sha), members in sorted(groups.items()):
        tile_counts = [tiles[m.slide_id].n_tiles for m in members if m.slide_id in tiles]
        total = sum(count for count in tile_counts if count is not None)
        rows.append([encoder, dim, precision, sha[:12], fmt_count(len(members)), fmt_count(total)])
    header = ["Encoder", "Dim", "Precision", "Weights SHA-256", "Slides", "Tiles"]
    return Fragment(
        "features.html.j2",
        {
            "table": Table.of(header, rows, numeric=(1, 4, 5)),
            "disagree": len({key[0] for key in groups}) < len(groups),
        },
    )


# --------------------------------------------------------------------------- task figures


def _km_fragment(predictions: pd.DataFrame) -> Fragment:
    groups = plots.assign_risk_groups(predictions)
    if groups.empty:
        return note("No survival predictions.")
    rows = []
    for model, subset in groups.groupby("model", sort=True):
        low = subset[subset["risk_group"] == "low"]
        high = subset[subset["risk_group"] == "high"]
        rows.append(
            [
                str(model),
                fmt_count(len(low)),
                fmt_count(int(low["event"].sum())),
                fmt_count(len(high)),
                fmt_count(int(high["event"].sum())),
                plots.format_pvalue(plots.logrank_pvalue(subset)),
            ]
        )
    header = ["Model", "Low risk n", "Low risk events", "High risk n", "High risk events", "Log-rank"]
    curves = plot(plots.km_figure(groups), "Kaplan–Meier curves by predicted risk group", "km")
    return Fragment("km.html.j2", {"curves": curves, "table": Table.of(header, rows, numeric=(1, 2, 3, 4))})


def _classification_fragment(
    predictions: pd.DataFrame, confusion: pd.DataFrame | None, task: str, class_names: Sequence[str]
) -> Fragment:
    roc = None
    if plots.pooled_test_rows(predictions, task):
        roc = plot(plots.roc_figure(predictions, class_names, task), f"ROC curves for {task}", "roc")
    matrices = None
    if confusion is not None and not confusion[confusion["task"] == task].empty:
        figure = figures.confusion_figure(confusion, task, class_names)
        matrices = plot(figure, f"Confusion matrices for {task}", "confusion")
    return Fragment("classification.html.j2", {"roc": roc, "confusion": matrices})


def _read_optional(path: Path | None, kind: str, columns: Sequence[str]) -> pd.DataFrame | None:
    if path is None or not Path(path).exists():
        return None
    frame = _read_table(Path(path), kind)
    _require(frame, columns, Path(path))
    return frame


# --------------------------------------------------------------------------- provenance


def _plain(value: Any) -> Any:
    """``value`` as YAML-safe builtins (mappings, lists, scalars; anything else as text)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _config_yaml(config: Mapping[str, Any]) -> str:
    try:
        return yaml.safe_dump(_plain(config), sort_keys=False, allow_unicode=True)
    except Exception as exc:  # noqa: BLE001 - provenance must never fail the report
        log.warning("config not representable as YAML (%s)", exc)
        return repr(config)


def package_versions(names: Sequence[str] = PROVENANCE_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (``not installed`` when absent)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except Exception:  # noqa: BLE001 - broken metadata counts as absent
            versions[name] = "not installed"
    return versions


def git_revision() -> str:
    """``git rev-parse HEAD`` in the working directory, or ``unknown``."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("git revision unavailable (%s)", exc)
        return "unknown"
    revision = result.stdout.strip()
    return revision if result.returncode == 0 and revision else "unknown"


def _provenance_fragment(
    config: Mapping[str, Any], feature_infos: Sequence[FeatureInfo], run_date: str
) -> Fragment:
    try:
        versions = package_versions()
        encoders = sorted({(info.encoder, info.weights_sha256) for info in feature_infos})
        facts = [
            ("Run date", run_date),
            ("histofuse", histofuse.__version__),
            ("Git revision", git_revision()),
            ("Python", platform.python_version()),
            ("Platform", platform.platform()),
        ]
        facts += [("Encoder", f"{name} (weights SHA-256 {sha})") for name, sha in encoders] or [
            ("Encoder", "none (no slide features)")
        ]
        packages = Table.of(["Package", "Version"], [[name, version] for name, version in versions.items()])
        return Fragment(
            "provenance.html.j2", {"facts": facts, "packages": packages, "config": _config_yaml(config)}
        )
    except Exception as exc:  # noqa: BLE001 - provenance must never fail the report
        log.warning("provenance incomplete (%s)", exc)
        return note(f"Provenance unavailable: {exc}")


# --------------------------------------------------------------------------- report


def _class_names(tables_dir: Path, predictions: pd.DataFrame) -> list[str]:
    n_classes = None
    if has_grade_task(predictions):
        n_classes = len(grade_probability_columns(predictions.columns))
    return plots.read_class_names(tables_dir / "labels.json", n_classes)


def _read_metrics(summary_tsv: Path, folds_tsv_metrics: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The metric summary and the per-fold metrics of :func:`histofuse.evaluate.run_evaluate`."""
    summary = _read_table(Path(summary_tsv), "metric summary")
    _require(summary, ["model", "task", "metric", "mean", "sd", "n_folds"], Path(summary_tsv))
    metric_folds = _read_table(Path(folds_tsv_metrics), "per-fold metrics")
    _require(metric_folds, ["model", "task", "metric", "fold", "value", "n"], Path(folds_tsv_metrics))
    for frame in (summary, metric_folds):
        for column in ("model", "task", "metric"):
            frame[column] = frame[column].astype(str)
    return summary, metric_folds


def _task_sections(
    predictions: pd.DataFrame,
    *,
    summary_tsv: Path,
    folds_tsv_metrics: Path,
    comparison_tsv: Path | None,
    confusion_tsv: Path | None,
    tables_dir: Path,
    class_names: Sequence[str],
    n_boot: int | None,
) -> list[Section]:
    """One section per task: survival first, then the classification tasks, then any other task with metrics."""
    summary, metric_folds = _read_metrics(summary_tsv, folds_tsv_metrics)
    comparison = _read_optional(comparison_tsv, "model comparison", ["task", "metric", "model_a", "model_b"])
    confusion_columns = ["model", "task", "fold", "true", "predicted", "count"]
    confusion = _read_optional(confusion_tsv, "confusion counts", confusion_columns)
    tasks = ["survival"] if has_survival_task(predictions) or "survival" in set(summary["task"]) else []
    tasks += [task for task in classification_tasks(predictions) if task not in tasks]
    tasks += sorted(set(summary["task"]) - set(tasks))
    task_sections = []
    for task in tasks:
        if task == "survival":
            task_figures = _km_fragment(predictions)
        else:
            names = class_names if task == "grade" else plots.read_class_names_for(tables_dir / "labels.json", task)
            task_figures = _classification_fragment(predictions, confusion, task, names)
        metrics = sections.task_fragment(
            task, summary=summary, folds=metric_folds, comparison=comparison, n_boot=n_boot
        )
        task_sections.append(Section(f"task-{task}", f"Task: {task}", [metrics, task_figures]))
    return task_sections or [Section("tasks", "Tasks", [note("No metrics were computed.")])]


def _input_sections(
    *,
    tables_dir: Path,
    folds_tsv: Path,
    class_names: Sequence[str],
    preprocessing_files: Sequence[Path],
    qc_pngs: Sequence[Path],
    tiles: Mapping[str, TileInfo],
    feature_infos: Sequence[FeatureInfo],
    benchmarks_dir: Path | None,
) -> list[Section]:
    """Cohort, data preparation, slides QC and feature extraction."""
    encoder = feature_infos[0].encoder if feature_infos else None
    tile_counts = {slide: info.n_tiles for slide, info in tiles.items()}
    features = [
        _features_fragment(feature_infos, tiles),
        sections.throughput_fragment(benchmarks_dir, encoder, tile_counts),
    ]
    cohort = _cohort_fragment(tables_dir=tables_dir, folds_tsv=folds_tsv, classes=class_names)
    preparation = sections.preparation_fragment(tables_dir / "labels.json", preprocessing_files)
    return [
        Section("cohort", "Cohort", [cohort]),
        Section("preparation", "Data preparation", [preparation]),
        Section("slides-qc", "Slides QC", [_qc_fragment(qc_pngs, tiles)]),
        Section("features", "Feature extraction", features),
    ]


def _bootstrap_replicates(config: Mapping[str, Any]) -> int | None:
    evaluation = config.get("evaluation")
    return evaluation.get("bootstrap") if isinstance(evaluation, Mapping) else None


def build_report(
    *,
    out_html: Path,
    summary_tsv: Path,
    folds_tsv_metrics: Path,
    prediction_files: Sequence[Path],
    tables_dir: Path,
    folds_tsv: Path,
    qc_pngs: Sequence[Path],
    tile_files: Sequence[Path],
    feature_files: Sequence[Path],
    config: Mapping[str, Any],
    title: str = "histofuse report",
    comparison_tsv: Path | None = None,
    confusion_tsv: Path | None = None,
    history_files: Sequence[Path] = (),
    missing_rate_tsv: Path | None = None,
    modality_ablation_tsv: Path | None = None,
    attention_pngs: Sequence[Path] = (),
    benchmarks_dir: Path | None = None,
    exclusions_tsv: Path | None = None,
    preprocessing_files: Sequence[Path] = (),
) -> None:
    """Write one self-contained HTML report to ``out_html`` (atomically).

    Sections: cohort, data preparation (what reading and preprocessing changed), slides QC, feature
    extraction, one per task (survival, then each classification task), training, attention,
    missing-modality robustness, modality ablation, exclusions and
    provenance. ``summary_tsv``, ``folds_tsv_metrics``, ``comparison_tsv`` and ``confusion_tsv``
    are the outputs of :func:`histofuse.evaluate.run_evaluate`; ``folds_tsv`` is the fold
    assignment (``patient_id, fold, split``). The optional inputs may be absent: their section
    then says what would fill it.
    """
    tables_dir = Path(tables_dir)
    predictions = read_predictions([Path(path) for path in prediction_files])
    class_names = _class_names(tables_dir, predictions)
    tiles = {info.slide_id: info for info in (read_tile_info(Path(p)) for p in tile_files)}
    feature_infos = [read_feature_info(Path(path)) for path in feature_files]
    run_date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    task_sections = _task_sections(
        predictions,
        summary_tsv=summary_tsv,
        folds_tsv_metrics=folds_tsv_metrics,
        comparison_tsv=comparison_tsv,
        confusion_tsv=confusion_tsv,
        tables_dir=tables_dir,
        class_names=class_names,
        n_boot=_bootstrap_replicates(config),
    )
    all_sections = [
        *_input_sections(
            tables_dir=tables_dir,
            folds_tsv=Path(folds_tsv),
            class_names=class_names,
            preprocessing_files=[Path(p) for p in preprocessing_files],
            qc_pngs=qc_pngs,
            tiles=tiles,
            feature_infos=feature_infos,
            benchmarks_dir=benchmarks_dir,
        ),
        *task_sections,
        Section("training", "Training", [sections.training_fragment(history_files)]),
        Section("attention", "Attention", [sections.attention_fragment(attention_pngs)]),
        Section("robustness", "Missing-modality robustness", [sections.robustness_fragment(missing_rate_tsv)]),
        Section("modalities", "Modality ablation", [sections.modality_fragment(modality_ablation_tsv)]),
        Section("exclusions", "Exclusions", [sections.exclusions_fragment(exclusions_tsv)]),
        Section(
            "input-notes",
            "Input notes",
            [sections.input_notes_fragment(read_notes(tables_dir / NOTES_FILE), prediction_files)],
        ),
        Section("provenance", "Provenance", [_provenance_fragment(config, feature_infos, run_date)]),
    ]
    document = render_page(title=title, run_date=run_date, version=histofuse.__version__, sections=all_sections)
    write_text_atomic(Path(out_html), document)
    log.info("report written to %s (%.1f kB)", out_html, len(document) / 1024)

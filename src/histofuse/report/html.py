"""The self-contained HTML report: cohort, slide QC, features, results, plots and provenance.

Everything the page shows is inside the one file: images are base64 PNG data URIs, the style sheet
is inline, and there is no script. All text taken from inputs is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import importlib.metadata
import io
import logging
import math
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import yaml
from lifelines import KaplanMeierFitter
from PIL import Image

import histofuse
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
from histofuse.report.markup import _esc, _facts, _fmt, _fmt_count, _img, _section, _table

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

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       max-width: 1180px; margin: 0 auto; padding: 1.5rem 2rem 4rem; line-height: 1.45; }
header { border-bottom: 2px solid #2c5d8a; margin-bottom: 1rem; }
h1 { margin: 0 0 .3rem; color: #2c5d8a; }
h2 { margin-top: 2.4rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
h3 { margin-top: 1.4rem; }
nav a { margin-right: 1rem; color: #2c5d8a; text-decoration: none; }
.meta { color: #666; font-size: .92rem; }
.note { color: #666; font-size: .9rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { border-bottom: 1px solid #e2e2e2; padding: .3rem .7rem; text-align: left;
         vertical-align: top; }
th { background: #f3f6f9; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td .n { color: #888; font-size: .8rem; margin-left: .3rem; }
td .ci { color: #666; font-size: .78rem; }
.wide { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: .8rem; }
.wide figure { margin: 0; } .wide img { width: 100%; height: auto; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .2rem 1.2rem; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
.thumbs { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr));
          gap: .8rem; }
.thumbs figure { margin: 0; border: 1px solid #e2e2e2; border-radius: 4px; padding: .3rem;
                 background: #fafafa; }
.thumbs img { width: 100%; height: auto; display: block; }
.thumbs figcaption { font-size: .8rem; word-break: break-all; margin-top: .2rem; }
.plot { max-width: 100%; height: auto; }
details summary { cursor: pointer; color: #2c5d8a; margin: .4rem 0; }
pre { background: #f6f8fa; border: 1px solid #e2e2e2; padding: .8rem; overflow-x: auto;
      font-size: .82rem; }
code { font-size: .85rem; }
"""


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


def _cohort_section(*, tables_dir: Path, folds_tsv: Path, classes: Sequence[str]) -> str:
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

    facts = [
        ("Patients", _fmt_count(len(patients))),
        ("Slides", _fmt_count(len(slides))),
        ("Patients with a slide", _fmt_count(slides["patient_id"].astype(str).nunique())),
    ]
    if "event" in patients and "survival_time" in patients:
        event = pd.to_numeric(patients["event"], errors="coerce")
        time = pd.to_numeric(patients["survival_time"], errors="coerce")
        known = event.notna() & time.notna()
        facts += [
            ("Events (deaths)", _fmt_count(int((event[known] == 1).sum()))),
            ("Censored", _fmt_count(int((event[known] == 0).sum()))),
            ("Survival missing", _fmt_count(int((~known).sum()))),
            (
                "Median follow-up (reverse Kaplan–Meier)",
                f"{_fmt(_median_followup(time[known], event[known]), 1)} months",
            ),
            ("Median observed time", f"{_fmt(float(time[known].median()), 1)} months"),
        ]
    counts = patients["grade_label"].value_counts()
    grade_labels = _ordered_labels(counts.index, classes)
    grade_rows = [
        [label, _fmt_count(int(counts[label])), f"{100 * counts[label] / len(patients):.1f}%"]
        for label in grade_labels
    ]

    folds = folds.assign(
        patient_id=folds["patient_id"].astype(str), split=folds["split"].astype(str)
    )
    merged = folds.merge(patients[["patient_id", "grade_label"]], on="patient_id", how="left")
    merged["grade_label"] = merged["grade_label"].fillna("missing")
    splits = ["train", "val", "test"]
    splits += sorted(set(merged["split"]) - set(splits))
    fold_labels = _ordered_labels(merged["grade_label"], classes)
    size = merged.groupby(["fold", "split"]).size()
    by_grade = merged.groupby(["fold", "grade_label", "split"]).size()
    fold_rows = []
    for fold in sorted(merged["fold"].unique()):
        row = [str(fold)] + [_fmt_count(int(size.get((fold, split), 0))) for split in splits]
        row += [
            " / ".join(str(int(by_grade.get((fold, label, split), 0))) for split in splits)
            for label in fold_labels
        ]
        fold_rows.append(row)
    split_names = " / ".join(splits)
    fold_header = ["Fold", *splits, *(f"grade {label} ({split_names})" for label in fold_labels)]

    return "\n".join(
        [
            _facts(facts),
            "<h3>Grade distribution</h3>",
            _table(["Grade", "Patients", "Share"], grade_rows, numeric=(1, 2)),
            "<h3>Cross-validation folds</h3>",
            _table(fold_header, fold_rows, numeric=range(1, len(fold_header))),
            '<p class="note">Grade columns give patient counts per split in the order '
            f"{_esc(split_names)}.</p>",
            _img(
                plots.fig_to_png_bytes(
                    figures.fold_composition_figure(
                        folds, patients.set_index("patient_id")["grade_label"]
                    )
                ),
                "Fold composition",
                css_class="plot composition",
            ),
        ]
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
        with h5py.File(path, "r") as handle:
            n_tiles = int(handle["coords"].shape[0])
            attrs = dict(handle.attrs)
    except (OSError, KeyError) as exc:
        log.warning("%s: cannot read tiles (%s)", path, exc)
        return TileInfo(slide_id=path.stem, n_tiles=None, tile_px=None, target_mpp=None)
    return TileInfo(
        slide_id=path.stem,
        n_tiles=n_tiles,
        tile_px=_decode_attr(attrs["tile_px"]) if "tile_px" in attrs else None,
        target_mpp=_decode_attr(attrs["target_mpp"]) if "target_mpp" in attrs else None,
    )


def read_feature_info(path: Path) -> FeatureInfo:
    """Encoder attributes of a features file (``unknown`` for what cannot be read)."""
    attrs: dict[str, Any] = {}
    try:
        with h5py.File(path, "r") as handle:
            attrs = dict(handle.attrs)
    except OSError as exc:
        log.warning("%s: cannot read features (%s)", path, exc)

    def attr(name: str) -> str:
        return _decode_attr(attrs[name]) if name in attrs else "unknown"

    return FeatureInfo(
        slide_id=path.stem,
        encoder=attr("encoder") if "encoder" in attrs else path.parent.name,
        dim=attr("dim"),
        precision=attr("precision"),
        weights_sha256=attr("weights_sha256"),
    )


def _thumbnail_png(path: Path) -> bytes | None:
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True)
            return buffer.getvalue()
    except (OSError, ValueError) as exc:
        log.warning("%s: cannot read QC image (%s)", path, exc)
        return None


def _distinct(values: Iterable[str | None]) -> str:
    found = sorted({value for value in values if value is not None})
    return ", ".join(found) if found else "unknown"


def _qc_section(qc_pngs: Sequence[Path], tiles: Mapping[str, TileInfo]) -> str:
    ordered = sorted((Path(path) for path in qc_pngs), key=lambda path: path.stem)
    counts = [info.n_tiles for info in tiles.values() if info.n_tiles is not None]
    facts = [
        ("Slides with QC images", _fmt_count(len(ordered))),
        ("Slides with tiles", _fmt_count(len(counts))),
        ("Tiles in total", _fmt_count(sum(counts))),
        ("Tiles per slide (median)", _fmt_count(int(np.median(counts))) if counts else "n/a"),
        ("Tile size (px)", _distinct(info.tile_px for info in tiles.values())),
        ("Tile resolution (µm/px)", _distinct(info.target_mpp for info in tiles.values())),
    ]
    figures = []
    for path in ordered[:MAX_THUMBNAILS]:
        slide_id = path.stem
        info = tiles.get(slide_id)
        tile_text = (
            f"{_fmt_count(info.n_tiles)} tiles"
            if info and info.n_tiles is not None
            else "tiles: n/a"
        )
        png = _thumbnail_png(path)
        image = _img(png, f"QC of {slide_id}") if png else '<p class="note">image unreadable</p>'
        figures.append(
            f"<figure>{image}<figcaption><strong>{_esc(slide_id)}</strong><br>"
            f"{_esc(tile_text)}</figcaption></figure>"
        )
    parts = [_facts(facts)]
    if figures:
        parts.append('<div class="thumbs">' + "\n".join(figures) + "</div>")
    else:
        parts.append('<p class="note">No QC images.</p>')
    omitted = len(ordered) - MAX_THUMBNAILS
    if omitted > 0:
        parts.append(
            f'<p class="note">Showing the first {MAX_THUMBNAILS} slides by id; '
            f"{omitted} more slide(s) omitted.</p>"
        )
    return "\n".join(parts)


def _features_section(feature_files: Sequence[Path], tiles: Mapping[str, TileInfo]) -> str:
    infos = [read_feature_info(Path(path)) for path in feature_files]
    if not infos:
        return '<p class="note">No feature files.</p>'
    groups: dict[tuple[str, str, str, str], list[FeatureInfo]] = {}
    for info in infos:
        key = (info.encoder, info.dim, info.precision, info.weights_sha256)
        groups.setdefault(key, []).append(info)
    rows = []
    for (encoder, dim, precision, sha), members in sorted(groups.items()):
        tile_counts = [tiles[m.slide_id].n_tiles for m in members if m.slide_id in tiles]
        total = sum(count for count in tile_counts if count is not None)
        rows.append(
            [encoder, dim, precision, sha[:12], _fmt_count(len(members)), _fmt_count(total)]
        )
    header = ["Encoder", "Dim", "Precision", "Weights SHA-256", "Slides", "Tiles"]
    note = (
        '<p class="note">More than one row per encoder means feature files disagree on their '
        "attributes: re-extract the stale ones.</p>"
        if len({key[0] for key in groups}) < len(groups)
        else ""
    )
    return _table(header, rows, numeric=(1, 4, 5)) + note


# --------------------------------------------------------------------------- task figures


def _km_block(predictions: pd.DataFrame) -> str:
    groups = plots.assign_risk_groups(predictions)
    if groups.empty:
        return '<p class="note">No survival predictions.</p>'
    rows = []
    for model, subset in groups.groupby("model", sort=True):
        low = subset[subset["risk_group"] == "low"]
        high = subset[subset["risk_group"] == "high"]
        rows.append(
            [
                str(model),
                _fmt_count(len(low)),
                _fmt_count(int(low["event"].sum())),
                _fmt_count(len(high)),
                _fmt_count(int(high["event"].sum())),
                plots.format_pvalue(plots.logrank_pvalue(subset)),
            ]
        )
    figure = plots.km_figure(groups)
    return "\n".join(
        [
            "<h3>Kaplan–Meier by predicted risk</h3>",
            '<p class="note">Pooled test predictions of all folds. Within each fold, patients whose '
            "predicted risk exceeds the median risk of that fold's training patients form the "
            "high-risk group.</p>",
            _img(
                plots.fig_to_png_bytes(figure),
                "Kaplan–Meier curves by predicted risk group",
                css_class="plot km",
            ),
            _table(
                ["Model", "Low risk n", "Low risk events", "High risk n", "High risk events", "Log-rank"],
                rows,
                numeric=(1, 2, 3, 4),
            ),
        ]
    )


def _classification_blocks(
    predictions: pd.DataFrame, confusion: pd.DataFrame | None, task: str, class_names: Sequence[str]
) -> list[str]:
    blocks = []
    if plots.pooled_test_rows(predictions, task):
        figure = plots.roc_figure(predictions, class_names, task)
        blocks += [
            "<h3>ROC curves</h3>",
            '<p class="note">One-vs-rest ROC curves per class on pooled test predictions of all '
            "folds.</p>",
            _img(plots.fig_to_png_bytes(figure), f"ROC curves for {task}", css_class="plot roc"),
        ]
    if confusion is not None and not confusion[confusion["task"] == task].empty:
        figure = figures.confusion_figure(confusion, task, class_names)
        blocks += [
            "<h3>Confusion matrices</h3>",
            '<p class="note">Test predictions summed over folds; shade = share of the true class.</p>',
            _img(plots.fig_to_png_bytes(figure), f"Confusion matrices for {task}", css_class="plot confusion"),
        ]
    return blocks


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


def _provenance_section(
    config: Mapping[str, Any], feature_infos: Sequence[FeatureInfo], run_date: str
) -> str:
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
        return "\n".join(
            [
                _facts(facts),
                "<h3>Packages</h3>",
                _table(["Package", "Version"], list(versions.items())),
                "<h3>Configuration</h3>",
                f"<pre>{_esc(_config_yaml(config))}</pre>",
            ]
        )
    except Exception as exc:  # noqa: BLE001 - provenance must never fail the report
        log.warning("provenance incomplete (%s)", exc)
        return f'<p class="note">Provenance unavailable: {_esc(exc)}</p>'


# --------------------------------------------------------------------------- report


def _class_names(tables_dir: Path, predictions: pd.DataFrame) -> list[str]:
    n_classes = None
    if has_grade_task(predictions):
        n_classes = len(grade_probability_columns(predictions.columns))
    return plots.read_class_names(tables_dir / "labels.json", n_classes)


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

    summary = _read_table(Path(summary_tsv), "metric summary")
    _require(summary, ["model", "task", "metric", "mean", "sd", "n_folds"], Path(summary_tsv))
    metric_folds = _read_table(Path(folds_tsv_metrics), "per-fold metrics")
    _require(metric_folds, ["model", "task", "metric", "fold", "value", "n"], Path(folds_tsv_metrics))
    for frame in (summary, metric_folds):
        for column in ("model", "task", "metric"):
            frame[column] = frame[column].astype(str)
    comparison = _read_optional(comparison_tsv, "model comparison", ["task", "metric", "model_a", "model_b"])
    confusion = _read_optional(confusion_tsv, "confusion counts", ["model", "task", "fold", "true", "predicted", "count"])
    n_boot = config.get("evaluation", {}).get("bootstrap") if isinstance(config.get("evaluation"), Mapping) else None

    tasks = ["survival"] if has_survival_task(predictions) or "survival" in set(summary["task"]) else []
    tasks += [task for task in classification_tasks(predictions) if task not in tasks]
    tasks += sorted(set(summary["task"]) - set(tasks))
    task_sections = []
    for task in tasks:
        if task == "survival":
            blocks = [_km_block(predictions)]
        else:
            names = class_names if task == "grade" else plots.read_class_names_for(tables_dir / "labels.json", task)
            blocks = _classification_blocks(predictions, confusion, task, names)
        body = sections.task_section(
            task, summary=summary, folds=metric_folds, comparison=comparison, figures_html=blocks, n_boot=n_boot
        )
        task_sections.append((f"task-{task}", f"Task: {task}", body))
    if not task_sections:
        task_sections.append(("tasks", "Tasks", '<p class="note">No metrics were computed.</p>'))

    encoder = feature_infos[0].encoder if feature_infos else None
    tile_counts = {slide: info.n_tiles for slide, info in tiles.items()}
    all_sections = [
        (
            "cohort",
            "Cohort",
            _cohort_section(tables_dir=tables_dir, folds_tsv=Path(folds_tsv), classes=class_names),
        ),
        (
            "preparation",
            "Data preparation",
            sections.preparation_section(tables_dir / "labels.json", [Path(p) for p in preprocessing_files]),
        ),
        ("slides-qc", "Slides QC", _qc_section(qc_pngs, tiles)),
        (
            "features",
            "Feature extraction",
            _features_section(feature_files, tiles)
            + sections.throughput_block(benchmarks_dir, encoder, tile_counts),
        ),
        *task_sections,
        ("training", "Training", sections.training_section(history_files)),
        ("attention", "Attention", sections.attention_section(attention_pngs)),
        ("robustness", "Missing-modality robustness", sections.robustness_section(missing_rate_tsv)),
        ("modalities", "Modality ablation", sections.modality_section(modality_ablation_tsv)),
        ("exclusions", "Exclusions", sections.exclusions_section(exclusions_tsv)),
        (
            "input-notes",
            "Input notes",
            sections.input_notes_section(read_notes(tables_dir / NOTES_FILE), prediction_files),
        ),
        ("provenance", "Provenance", _provenance_section(config, feature_infos, run_date)),
    ]
    nav = "".join(f'<a href="#{_esc(anchor)}">{_esc(name)}</a>' for anchor, name, _ in all_sections)
    header = (
        f"<header><h1>{_esc(title)}</h1>"
        f'<p class="meta">Generated {_esc(run_date)} · histofuse {_esc(histofuse.__version__)}'
        f"</p><nav>{nav}</nav></header>"
    )
    body = "\n".join(_section(anchor, name, content) for anchor, name, content in all_sections)
    document = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n{header}\n{body}\n</body>\n</html>\n"
    )
    write_text_atomic(Path(out_html), document)
    log.info("report written to %s (%.1f kB)", out_html, len(document) / 1024)

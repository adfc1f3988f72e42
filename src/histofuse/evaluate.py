"""Score cross-validated predictions: one metric value per model, task and fold, then a summary.

Prediction files (``{results}/predictions/{model}/fold{k}.parquet``) hold train, val and test rows;
only ``split == "test"`` rows are scored. Tasks: ``grade`` and ``diagnosis`` (``{task}`` label,
``{task}_pred``, ``{task}_prob_{k}``), ``binary`` (``binary`` label, ``binary_prob``) and
``survival`` (``survival_time``, ``event``, ``risk``). A model whose file lacks a task's columns did
not train that task and gets no rows for it. Rows with a missing label are left out of that task
only, and ``n`` records how many rows were scored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from histofuse import metrics
from histofuse.errors import HistofuseError
from histofuse.io import atomic_path

__all__ = [
    "FOLD_COLUMNS",
    "SUMMARY_COLUMNS",
    "evaluate_predictions",
    "grade_probability_columns",
    "has_grade_task",
    "has_survival_task",
    "read_predictions",
    "run_evaluate",
    "summarise",
]

log = logging.getLogger(__name__)

FOLD_COLUMNS: tuple[str, ...] = ("model", "task", "metric", "fold", "value", "n")
SUMMARY_COLUMNS: tuple[str, ...] = ("model", "task", "metric", "mean", "sd", "n_folds")

_REQUIRED_COLUMNS = ("patient_id", "fold", "split", "model")
_SURVIVAL_COLUMNS = ("survival_time", "event", "risk")
_PROB_PATTERN = re.compile(r"^grade_prob_(\d+)$")
_CLASS_TASKS = ("grade", "diagnosis")
_FOLD_STEM = re.compile(r"^fold(\d+)$")

_GradeMetric = Callable[[np.ndarray, np.ndarray, np.ndarray], float]
_GRADE_METRICS: tuple[tuple[str, _GradeMetric], ...] = (
    ("auc", lambda y, pred, probs: metrics.multiclass_auc(y, probs)),
    ("accuracy", lambda y, pred, probs: metrics.accuracy(y, pred)),
    ("balanced_accuracy", lambda y, pred, probs: metrics.balanced_accuracy(y, pred)),
    ("f1_macro", lambda y, pred, probs: metrics.macro_f1(y, pred)),
)


def grade_probability_columns(
    columns: Iterable[str], *, path: Path | None = None, task: str = "grade"
) -> list[str]:
    """The ``{task}_prob_{i}`` columns ordered by class index; they must be ``0 … K-1``."""
    pattern = _PROB_PATTERN if task == "grade" else re.compile(rf"^{task}_prob_(\d+)$")
    indexed = sorted(
        (int(match.group(1)), name)
        for name in columns
        if (match := pattern.match(str(name))) is not None
    )
    indices = [index for index, _ in indexed]
    if indices != list(range(len(indices))):
        raise HistofuseError(
            f"{task} probability columns are not numbered 0..K-1 (found indices {indices})",
            path=path,
            fix=f"write one {task}_prob_{{i}} column per class, i = 0 … K-1",
        )
    return [name for _, name in indexed]


def has_grade_task(frame: pd.DataFrame) -> bool:
    """Whether the predictions carry the grade task (a label column and class probabilities)."""
    return "grade" in frame.columns and "grade_prob_0" in frame.columns


def has_class_task(frame: pd.DataFrame, task: str) -> bool:
    """Whether the predictions carry the classification ``task`` (label and class probabilities)."""
    return task in frame.columns and f"{task}_prob_0" in frame.columns


def has_binary_task(frame: pd.DataFrame) -> bool:
    """Whether the predictions carry the binary task (``binary`` label and ``binary_prob``)."""
    return "binary" in frame.columns and "binary_prob" in frame.columns


def has_survival_task(frame: pd.DataFrame) -> bool:
    """Whether the predictions carry the survival task (time, event and risk columns)."""
    return all(column in frame.columns for column in _SURVIVAL_COLUMNS)


def _read_prediction_file(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise HistofuseError(
            f"cannot read predictions: {exc}", path=path, fix="re-run the training step"
        ) from exc
    for column in _REQUIRED_COLUMNS:
        if column not in frame.columns:
            raise HistofuseError(
                "prediction file lacks a required column",
                path=path,
                column=column,
                fix=f"prediction files need the columns {', '.join(_REQUIRED_COLUMNS)}",
            )
    if has_grade_task(frame):
        grade_probability_columns(frame.columns, path=path)
    frame["split"] = frame["split"].astype(str)
    return frame


def read_predictions(prediction_files: Sequence[Path]) -> pd.DataFrame:
    """All prediction files concatenated (every split), with a ``source`` column naming the file."""
    frames = []
    for path in prediction_files:
        frame = _read_prediction_file(Path(path))
        frame["source"] = str(path)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*_REQUIRED_COLUMNS, "source"])
    return pd.concat(frames, ignore_index=True, sort=False)


def _identity_from_path(path: Path) -> tuple[str, int]:
    match = _FOLD_STEM.match(path.stem)
    if match is None:
        raise HistofuseError(
            "empty prediction file whose name does not say the fold",
            path=path,
            fix="name prediction files {results}/predictions/{model}/fold{k}.parquet",
        )
    return path.parent.name, int(match.group(1))


def _units(frame: pd.DataFrame, path: Path) -> list[tuple[str, int]]:
    """The (model, fold) pairs a prediction file covers."""
    if frame.empty:
        return [_identity_from_path(path)]
    if frame["model"].isna().any() or frame["fold"].isna().any():
        column = "model" if frame["model"].isna().any() else "fold"
        raise HistofuseError("missing value", path=path, column=column)
    pairs = frame[["model", "fold"]].drop_duplicates()
    return [(str(model), int(fold)) for model, fold in pairs.itertuples(index=False)]


def _finite_or_raise(values: np.ndarray, path: Path, column: str) -> None:
    if not np.isfinite(values).all():
        raise HistofuseError(
            "prediction is missing or not finite for a labelled test patient",
            path=path,
            column=column,
            fix="check the model's output; every test patient needs a prediction",
        )


def _grade_records(test: pd.DataFrame, path: Path, task: str = "grade") -> list[tuple[str, str, float, int]]:
    prob_columns = grade_probability_columns(test.columns, path=path, task=task)
    rows = test[test[task].notna()]
    probs = rows[prob_columns].to_numpy(dtype=np.float64, na_value=np.nan)
    _finite_or_raise(probs, path, f"{task}_prob_*")
    y_true = rows[task].to_numpy(dtype=np.float64, na_value=np.nan)
    if f"{task}_pred" in rows.columns:
        y_pred = rows[f"{task}_pred"].to_numpy(dtype=np.float64, na_value=np.nan)
        _finite_or_raise(y_pred, path, f"{task}_pred")
    else:
        y_pred = probs.argmax(axis=1).astype(np.float64)
    n = len(rows)
    return [(task, name, fn(y_true, y_pred, probs), n) for name, fn in _GRADE_METRICS]


def _binary_records(test: pd.DataFrame, path: Path) -> list[tuple[str, str, float, int]]:
    rows = test[test["binary"].notna()]
    positive = rows["binary_prob"].to_numpy(dtype=np.float64, na_value=np.nan)
    _finite_or_raise(positive, path, "binary_prob")
    probs = np.stack([1.0 - positive, positive], axis=1)
    y_true = rows["binary"].to_numpy(dtype=np.float64, na_value=np.nan)
    y_pred = (positive >= 0.5).astype(np.float64)
    return [("binary", name, fn(y_true, y_pred, probs), len(rows)) for name, fn in _GRADE_METRICS]


def _survival_records(test: pd.DataFrame, path: Path) -> list[tuple[str, str, float, int]]:
    rows = test[test["survival_time"].notna() & test["event"].notna()]
    risk = rows["risk"].to_numpy(dtype=np.float64, na_value=np.nan)
    _finite_or_raise(risk, path, "risk")
    time = rows["survival_time"].to_numpy(dtype=np.float64, na_value=np.nan)
    event = rows["event"].to_numpy(dtype=np.float64, na_value=np.nan)
    return [("survival", "cindex", metrics.cindex(time, risk, event), len(rows))]


def evaluate_predictions(prediction_files: Sequence[Path]) -> pd.DataFrame:
    """Metric values per model, task, metric and fold, from the test rows of each file.

    Returns a long table with the columns :data:`FOLD_COLUMNS`
    (``model, task, metric, fold, value, n``), sorted by model, task, metric and fold.
    """
    records: list[dict[str, object]] = []
    seen: dict[tuple[str, int], Path] = {}
    for raw_path in prediction_files:
        path = Path(raw_path)
        frame = _read_prediction_file(path)
        for model, fold in _units(frame, path):
            if (model, fold) in seen:
                raise HistofuseError(
                    f"model {model!r} fold {fold} also appears in {seen[(model, fold)]}",
                    path=path,
                    fix="give each model and fold exactly one prediction file",
                )
            seen[(model, fold)] = path
            unit = frame[(frame["model"].astype(str) == model) & (frame["fold"] == fold)]
            test = unit[unit["split"] == "test"]
            if test.empty:
                log.warning("%s: no test rows for model %s fold %d", path, model, fold)
            task_records: list[tuple[str, str, float, int]] = []
            for task in _CLASS_TASKS:
                if has_class_task(frame, task):
                    task_records += _grade_records(test, path, task)
            if has_binary_task(frame):
                task_records += _binary_records(test, path)
            if has_survival_task(frame):
                task_records += _survival_records(test, path)
            if not task_records:
                log.warning("%s: no grade, diagnosis, binary or survival predictions found", path)
            for task, metric, value, n in task_records:
                records.append(
                    {
                        "model": model,
                        "task": task,
                        "metric": metric,
                        "fold": fold,
                        "value": float(value),
                        "n": int(n),
                    }
                )
    table = pd.DataFrame.from_records(records, columns=list(FOLD_COLUMNS))
    table = table.astype(
        {
            "model": str,
            "task": str,
            "metric": str,
            "fold": "int64",
            "value": "float64",
            "n": "int64",
        }
    )
    return table.sort_values(["model", "task", "metric", "fold"], kind="stable").reset_index(
        drop=True
    )


def summarise(folds_table: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1) of each metric across folds.

    NaN fold values are dropped; ``n_folds`` counts the folds that remain. A metric with a single
    usable fold gets ``sd = NaN``; one with none keeps its row with ``mean = NaN`` and
    ``n_folds = 0``. Columns: :data:`SUMMARY_COLUMNS` (``model, task, metric, mean, sd, n_folds``).
    """
    missing = [
        column for column in ("model", "task", "metric", "value") if column not in folds_table
    ]
    if missing:
        raise ValueError(f"folds table lacks columns {missing}")
    keys = ["model", "task", "metric"]
    if folds_table.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS)).astype(
            {"mean": "float64", "sd": "float64", "n_folds": "int64"}
        )
    values = pd.to_numeric(folds_table["value"], errors="coerce")
    grouped = values.groupby([folds_table[key] for key in keys], sort=True)
    summary = pd.DataFrame(
        {
            "mean": grouped.mean(),
            "sd": grouped.std(ddof=1),
            "n_folds": grouped.count().astype("int64"),
        }
    ).reset_index()
    return summary[list(SUMMARY_COLUMNS)]


def _write_tsv(frame: pd.DataFrame, target: Path) -> None:
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, na_rep="NaN")


def run_evaluate(*, prediction_files: Sequence[Path], out_folds: Path, out_summary: Path) -> None:
    """Evaluate all prediction files and write ``folds.tsv`` and ``summary.tsv`` atomically."""
    folds_table = evaluate_predictions(prediction_files)
    summary = summarise(folds_table)
    _write_tsv(folds_table, Path(out_folds))
    _write_tsv(summary, Path(out_summary))
    log.info(
        "evaluated %d prediction file(s): %d fold metric(s), %d summary row(s)",
        len(prediction_files),
        len(folds_table),
        len(summary),
    )
    for row in summary.itertuples(index=False):
        log.info(
            "%s %s %s: %.4f ± %.4f (%d folds)",
            row.model,
            row.task,
            row.metric,
            row.mean,
            row.sd,
            row.n_folds,
        )

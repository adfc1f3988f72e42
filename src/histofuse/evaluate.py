"""Score cross-validated predictions: metric values per model, task and fold, then a summary.

Prediction files (``{results}/predictions/{model}/fold{k}.parquet``) hold train, val and test rows;
only ``split == "test"`` rows are scored. Other rows of the same fold enter only where a metric
needs them: the censoring distribution of the IPCW survival metrics (Uno's c-index,
time-dependent AUC, Brier scores) is the Kaplan–Meier estimate over the survival *labels* of all
patients of the fold (no prediction enters it; test patients outliving every training patient
would otherwise leave it undefined), and the Cox model that turns a risk score into survival curves
for the Brier score (:func:`histofuse.metrics.survival_from_risk`) is fitted on the training rows. Rows with a missing label are left out of that task
only, and ``n`` records how many test rows were scored.

Tasks are found from the columns: survival from ``survival_time, event, risk``; a classification
task ``T`` from a label column ``T`` and class probabilities ``T_prob_0 … T_prob_{K-1}`` (optional
``T_pred``; the arg-max otherwise). The grade task is the classification task named ``grade``.

The summary gives, per model, task and metric, the mean and sample standard deviation over folds
and a 95 % percentile bootstrap interval of that mean: in each of ``n_boot`` replicates the test
patients of every fold are resampled with replacement (within their fold), the metric is recomputed
per fold and averaged over folds. Replicates in which the metric is undefined in some fold are left
out; ``n_boot`` in the summary counts those used. The generator is seeded per model and task, so
the interval of one model does not depend on which other models are evaluated with it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import stats
from tqdm import tqdm

from histofuse import metrics
from histofuse.configuration import EvaluationConfig
from histofuse.errors import HistofuseError
from histofuse.io import atomic_path

__all__ = [
    "COMPARISON_COLUMNS",
    "CONFUSION_COLUMNS",
    "FOLD_COLUMNS",
    "SUMMARY_COLUMNS",
    "SURVIVAL_METRICS",
    "CLASSIFICATION_METRICS",
    "EvaluationSettings",
    "classification_tasks",
    "compare_models",
    "confusion_table",
    "evaluate_predictions",
    "grade_probability_columns",
    "has_grade_task",
    "has_survival_task",
    "probability_columns",
    "read_predictions",
    "run_evaluate",
    "summarise",
]

log = logging.getLogger(__name__)

FOLD_COLUMNS: tuple[str, ...] = ("model", "task", "metric", "fold", "value", "n")
SUMMARY_COLUMNS: tuple[str, ...] = (
    "model",
    "task",
    "metric",
    "mean",
    "sd",
    "n_folds",
    "ci_low",
    "ci_high",
    "n_boot",
)
COMPARISON_COLUMNS: tuple[str, ...] = (
    "task",
    "metric",
    "model_a",
    "model_b",
    "n_folds",
    "mean_a",
    "mean_b",
    "mean_diff",
    "t_statistic",
    "p_ttest",
    "wilcoxon_statistic",
    "p_wilcoxon",
)
CONFUSION_COLUMNS: tuple[str, ...] = ("model", "task", "fold", "true", "predicted", "count")
SURVIVAL_METRICS: tuple[str, ...] = ("cindex", "uno_cindex", "td_auc", "ibs", "ibs_km")
CLASSIFICATION_METRICS: tuple[str, ...] = ("auc", "accuracy", "balanced_accuracy", "f1_macro")

_REQUIRED_COLUMNS = ("patient_id", "fold", "split", "model")
_SURVIVAL_COLUMNS = ("survival_time", "event", "risk")
_PROB_PATTERN = re.compile(r"^(.+)_prob_(\d+)$")
_FOLD_STEM = re.compile(r"^fold(\d+)$")


_EVALUATION_DEFAULTS = EvaluationConfig()
"""Defaults of ``EvaluationSettings``: the configuration's ``evaluation`` section."""


@dataclass(frozen=True, kw_only=True)
class EvaluationSettings:
    """How the summary's bootstrap interval is drawn."""

    n_boot: int = _EVALUATION_DEFAULTS.bootstrap
    seed: int = _EVALUATION_DEFAULTS.seed

    def __post_init__(self) -> None:
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be >= 0, got {self.n_boot}")


# --------------------------------------------------------------------------- columns and tasks


def probability_columns(
    columns: Iterable[str], task: str = "grade", *, path: Path | None = None
) -> list[str]:
    """The ``{task}_prob_{i}`` columns ordered by class index; they must be ``0 … K-1``."""
    indexed = sorted(
        (int(match.group(2)), name)
        for name in columns
        if (match := _PROB_PATTERN.match(str(name))) is not None and match.group(1) == task
    )
    indices = [index for index, _ in indexed]
    if indices != list(range(len(indices))):
        raise HistofuseError(
            f"{task} probability columns are not numbered 0..K-1 (found indices {indices})",
            path=path,
            fix=f"write one {task}_prob_{{i}} column per class, i = 0 … K-1",
        )
    return [name for _, name in indexed]


def grade_probability_columns(columns: Iterable[str], *, path: Path | None = None) -> list[str]:
    """The ``grade_prob_{i}`` columns ordered by class index; they must be ``0 … K-1``."""
    return probability_columns(columns, "grade", path=path)


def classification_tasks(frame: pd.DataFrame) -> list[str]:
    """Tasks with a label column and a ``{task}_prob_0`` column, grade first, then by name."""
    found = {
        match.group(1)
        for name in frame.columns
        if (match := _PROB_PATTERN.match(str(name))) is not None and match.group(2) == "0"
    }
    tasks = [task for task in found if task in frame.columns]
    return sorted(tasks, key=lambda task: (task != "grade", task))


def has_grade_task(frame: pd.DataFrame) -> bool:
    """Whether the predictions carry the grade task (a label column and class probabilities)."""
    return "grade" in frame.columns and "grade_prob_0" in frame.columns


def has_survival_task(frame: pd.DataFrame) -> bool:
    """Whether the predictions carry the survival task (time, event and risk columns)."""
    return all(column in frame.columns for column in _SURVIVAL_COLUMNS)


# --------------------------------------------------------------------------- reading


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
    _binary_as_two_classes(frame)
    for task in classification_tasks(frame):
        probability_columns(frame.columns, task, path=path)
    frame["split"] = frame["split"].astype(str)
    return frame


def _binary_as_two_classes(frame: pd.DataFrame) -> None:
    """A binary task's ``binary_prob`` (probability of class 1) as ``binary_prob_0/1`` and ``binary_pred``."""
    if "binary" not in frame.columns or "binary_prob" not in frame.columns or "binary_prob_0" in frame.columns:
        return
    positive = frame["binary_prob"].astype("float64")
    frame["binary_prob_0"] = 1.0 - positive
    frame["binary_prob_1"] = positive
    if "binary_pred" not in frame.columns:
        frame["binary_pred"] = (positive >= 0.5).astype("float64").where(positive.notna())


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


def _floats(frame: pd.DataFrame, column: str) -> NDArray[np.float64]:
    return frame[column].to_numpy(dtype=np.float64, na_value=np.nan)


# --------------------------------------------------------------------------- per-fold scoring


@dataclass(frozen=True, kw_only=True)
class ClassificationFold:
    """The labelled test rows of one model, classification task and fold."""

    model: str
    task: str
    fold: int
    y_true: NDArray[np.float64]
    y_pred: NDArray[np.float64]
    probs: NDArray[np.float64]

    @property
    def n(self) -> int:
        return len(self.y_true)

    def scores(self, index: NDArray[np.int64] | None = None) -> dict[str, float]:
        """The metrics on the rows ``index`` (all rows when ``None``)."""
        rows = slice(None) if index is None else index
        y, pred, probs = self.y_true[rows], self.y_pred[rows], self.probs[rows]
        return {
            "auc": metrics.multiclass_auc(y, probs),
            "accuracy": metrics.accuracy(y, pred),
            "balanced_accuracy": metrics.balanced_accuracy(y, pred),
            "f1_macro": metrics.macro_f1(y, pred),
        }


@dataclass(frozen=True, kw_only=True)
class SurvivalFold:
    """The labelled test rows of one model and fold, with what the IPCW metrics need from training.

    ``survival`` holds the test patients' survival probabilities at ``times``
    (:func:`histofuse.metrics.survival_from_risk`, fitted on the training rows; those rows'
    predictions are in-sample, so the fitted curves can be over-confident) and ``reference`` the
    training Kaplan–Meier curve, whose Brier score (``ibs_km``) is the no-information reference.
    """

    model: str
    task: str
    fold: int
    time: NDArray[np.float64]
    event: NDArray[np.float64]
    risk: NDArray[np.float64]
    censor_time: NDArray[np.float64]
    censor_event: NDArray[np.float64]
    times: NDArray[np.float64] = field(repr=False)
    survival: NDArray[np.float64] = field(repr=False)
    reference: NDArray[np.float64] = field(repr=False)

    @property
    def n(self) -> int:
        return len(self.time)

    def scores(self, index: NDArray[np.int64] | None = None) -> dict[str, float]:
        """The metrics on the rows ``index`` (all rows when ``None``)."""
        rows = slice(None) if index is None else index
        time, event, risk = self.time[rows], self.event[rows], self.risk[rows]
        train = (self.censor_time, self.censor_event)
        tau = float(self.times[-1]) if self.times.size else float("nan")
        return {
            "cindex": metrics.cindex(time, risk, event),
            "uno_cindex": metrics.uno_cindex(*train, time, event, risk, tau=tau),
            "td_auc": metrics.td_auc(*train, time, event, risk, self.times),
            "ibs": metrics.integrated_brier(*train, time, event, self.survival[rows], self.times),
            "ibs_km": metrics.integrated_brier(
                *train, time, event, self.reference[rows], self.times
            ),
        }


FoldScorer = ClassificationFold | SurvivalFold


def _classification_fold(
    model: str, fold: int, task: str, test: pd.DataFrame, path: Path
) -> ClassificationFold:
    prob_columns = probability_columns(test.columns, task, path=path)
    rows = test[test[task].notna()]
    probs = rows[prob_columns].to_numpy(dtype=np.float64, na_value=np.nan)
    _finite_or_raise(probs, path, f"{task}_prob_*")
    pred_column = f"{task}_pred"
    if pred_column in rows.columns:
        y_pred = _floats(rows, pred_column)
        _finite_or_raise(y_pred, path, pred_column)
    else:
        y_pred = probs.argmax(axis=1).astype(np.float64)
    return ClassificationFold(
        model=model, task=task, fold=fold, y_true=_floats(rows, task), y_pred=y_pred, probs=probs
    )


def _survival_fold(
    model: str, fold: int, unit: pd.DataFrame, test: pd.DataFrame, path: Path
) -> SurvivalFold:
    rows = test[test["survival_time"].notna() & test["event"].notna()]
    risk = _floats(rows, "risk")
    _finite_or_raise(risk, path, "risk")
    time, event = _floats(rows, "survival_time"), _floats(rows, "event")
    train = unit[
        (unit["split"] == "train")
        & unit["survival_time"].notna()
        & unit["event"].notna()
        & unit["risk"].notna()
    ]
    train_time, train_event = _floats(train, "survival_time"), _floats(train, "event")
    if len(train) == 0:
        log.warning("%s: no training rows with survival labels; the Brier score is NaN", path)
    labelled = unit[unit["survival_time"].notna() & unit["event"].notna()]
    censor_time, censor_event = _floats(labelled, "survival_time"), _floats(labelled, "event")
    times = metrics.evaluation_times(censor_time, time)
    survival = metrics.survival_from_risk(
        _floats(train, "risk"), train_time, train_event, risk, times
    )
    return SurvivalFold(
        model=model,
        task="survival",
        fold=fold,
        time=time,
        event=event,
        risk=risk,
        censor_time=censor_time,
        censor_event=censor_event,
        times=times,
        survival=survival,
        reference=metrics.km_survival(train_time, train_event, len(time), times),
    )


def fold_scorers(prediction_files: Sequence[Path]) -> list[FoldScorer]:
    """One scorer per model, task and fold found in ``prediction_files``."""
    scorers: list[FoldScorer] = []
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
            found: list[FoldScorer] = [
                _classification_fold(model, fold, task, test, path)
                for task in classification_tasks(frame)
            ]
            if has_survival_task(frame):
                found.append(_survival_fold(model, fold, unit, test, path))
            if not found:
                log.warning("%s: neither classification nor survival predictions found", path)
            scorers.extend(found)
    return scorers


def _folds_frame(records: list[dict[str, object]]) -> pd.DataFrame:
    table = pd.DataFrame.from_records(records, columns=list(FOLD_COLUMNS))
    table = table.astype(
        {"model": str, "task": str, "metric": str, "fold": "int64", "value": "float64", "n": "int64"}
    )
    return table.sort_values(["model", "task", "metric", "fold"], kind="stable").reset_index(
        drop=True
    )


def _score_table(scorers: Sequence[FoldScorer]) -> pd.DataFrame:
    records: list[dict[str, object]] = []
    for scorer in scorers:
        for metric, value in scorer.scores().items():
            records.append(
                {
                    "model": scorer.model,
                    "task": scorer.task,
                    "metric": metric,
                    "fold": scorer.fold,
                    "value": float(value),
                    "n": scorer.n,
                }
            )
    return _folds_frame(records)


def evaluate_predictions(prediction_files: Sequence[Path]) -> pd.DataFrame:
    """Metric values per model, task, metric and fold, from the test rows of each file.

    Returns a long table with the columns :data:`FOLD_COLUMNS`
    (``model, task, metric, fold, value, n``), sorted by model, task, metric and fold.
    """
    return _score_table(fold_scorers(prediction_files))


# --------------------------------------------------------------------------- summary


@contextlib.contextmanager
def _quiet_metrics() -> Iterator[None]:
    """Silence the per-call warnings of undefined metrics inside the bootstrap loop."""
    logger = logging.getLogger(metrics.__name__)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # scikit-survival divides by zero when a resample has no event before a time.
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    finally:
        logger.setLevel(level)


def _unit_seed(seed: int, model: str, task: str) -> list[int]:
    return [seed, zlib.crc32(model.encode()), zlib.crc32(task.encode())]


def bootstrap_intervals(
    scorers: Sequence[FoldScorer], *, n_boot: int, seed: int
) -> dict[str, tuple[float, float, int]]:
    """Percentile 95 % interval of the mean over folds, per metric: ``(low, high, n_used)``.

    ``scorers`` are the folds of one model and task. See the module docstring for the procedure.
    """
    if not scorers:
        return {}
    rng = np.random.default_rng(_unit_seed(seed, scorers[0].model, scorers[0].task))
    draws: dict[str, list[float]] = {}
    with _quiet_metrics():
        for _ in range(n_boot):
            per_fold = [
                scorer.scores(rng.integers(0, scorer.n, size=scorer.n))
                for scorer in scorers
                if scorer.n
            ]
            if not per_fold:
                break
            for metric in per_fold[0]:
                values = [scores[metric] for scores in per_fold]
                if all(np.isfinite(values)):
                    draws.setdefault(metric, []).append(float(np.mean(values)))
                else:
                    draws.setdefault(metric, [])
    intervals = {}
    for metric, values in draws.items():
        if values:
            low, high = np.percentile(values, [2.5, 97.5])
            intervals[metric] = (float(low), float(high), len(values))
        else:
            intervals[metric] = (float("nan"), float("nan"), 0)
    return intervals


def summarise(
    folds_table: pd.DataFrame,
    intervals: dict[tuple[str, str, str], tuple[float, float, int]] | None = None,
) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1) of each metric across folds, with intervals.

    NaN fold values are dropped; ``n_folds`` counts the folds that remain. A metric with a single
    usable fold gets ``sd = NaN``; one with none keeps its row with ``mean = NaN`` and
    ``n_folds = 0``. ``intervals`` maps ``(model, task, metric)`` to ``(ci_low, ci_high, n_boot)``
    (from :func:`bootstrap_intervals`); missing entries give NaN and 0. Columns:
    :data:`SUMMARY_COLUMNS`.
    """
    missing = [
        column for column in ("model", "task", "metric", "value") if column not in folds_table
    ]
    if missing:
        raise ValueError(f"folds table lacks columns {missing}")
    keys = ["model", "task", "metric"]
    dtypes = {
        "mean": "float64",
        "sd": "float64",
        "n_folds": "int64",
        "ci_low": "float64",
        "ci_high": "float64",
        "n_boot": "int64",
    }
    if folds_table.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS)).astype(dtypes)
    values = pd.to_numeric(folds_table["value"], errors="coerce")
    grouped = values.groupby([folds_table[key] for key in keys], sort=True)
    summary = pd.DataFrame(
        {
            "mean": grouped.mean(),
            "sd": grouped.std(ddof=1),
            "n_folds": grouped.count().astype("int64"),
        }
    ).reset_index()
    intervals = intervals or {}
    found = [
        intervals.get((str(m), str(t), str(k)), (float("nan"), float("nan"), 0))
        for m, t, k in summary[keys].itertuples(index=False)
    ]
    summary["ci_low"] = [low for low, _, _ in found]
    summary["ci_high"] = [high for _, high, _ in found]
    summary["n_boot"] = [n for _, _, n in found]
    return summary[list(SUMMARY_COLUMNS)].astype(dtypes)


# --------------------------------------------------------------------------- comparison


def compare_models(folds_table: pd.DataFrame) -> pd.DataFrame:
    """Paired comparison of every two models on each task and metric, over their common folds.

    Per pair: the folds where both models have a finite value, their means, the mean difference
    ``a - b``, a paired t-test (:func:`scipy.stats.ttest_rel`) and a Wilcoxon signed-rank test
    (:func:`scipy.stats.wilcoxon`, exact for few folds). Tests need at least two common folds and
    are NaN otherwise (and the Wilcoxon test when every difference is zero). With ``k`` folds the
    smallest two-sided Wilcoxon p-value is ``2 / 2**k`` (0.0625 for 5 folds).
    """
    records: list[dict[str, object]] = []
    for (task, metric), rows in folds_table.groupby(["task", "metric"], sort=True):
        wide = rows.pivot_table(index="fold", columns="model", values="value", aggfunc="first")
        for model_a, model_b in itertools.combinations(sorted(map(str, wide.columns)), 2):
            pair = wide[[model_a, model_b]].dropna()
            a, b = pair[model_a].to_numpy(), pair[model_b].to_numpy()
            diff = a - b
            t_stat = p_t = w_stat = p_w = float("nan")
            if len(pair) >= 2:
                if np.ptp(diff) > 0:
                    result = stats.ttest_rel(a, b)
                    t_stat, p_t = float(result.statistic), float(result.pvalue)
                if np.any(diff != 0):
                    result = stats.wilcoxon(a, b)
                    w_stat, p_w = float(result.statistic), float(result.pvalue)
            records.append(
                {
                    "task": str(task),
                    "metric": str(metric),
                    "model_a": model_a,
                    "model_b": model_b,
                    "n_folds": len(pair),
                    "mean_a": float(a.mean()) if len(pair) else float("nan"),
                    "mean_b": float(b.mean()) if len(pair) else float("nan"),
                    "mean_diff": float(diff.mean()) if len(pair) else float("nan"),
                    "t_statistic": t_stat,
                    "p_ttest": p_t,
                    "wilcoxon_statistic": w_stat,
                    "p_wilcoxon": p_w,
                }
            )
    return pd.DataFrame.from_records(records, columns=list(COMPARISON_COLUMNS))


def confusion_table(scorers: Sequence[FoldScorer]) -> pd.DataFrame:
    """Confusion counts of every classification fold (``true`` and ``predicted`` class indices)."""
    records: list[dict[str, object]] = []
    for scorer in scorers:
        if not isinstance(scorer, ClassificationFold) or scorer.n == 0:
            continue
        n_classes = scorer.probs.shape[1]
        counts = metrics.class_confusion(scorer.y_true, scorer.y_pred, n_classes)
        for true, predicted in itertools.product(range(n_classes), repeat=2):
            records.append(
                {
                    "model": scorer.model,
                    "task": scorer.task,
                    "fold": scorer.fold,
                    "true": true,
                    "predicted": predicted,
                    "count": int(counts[true, predicted]),
                }
            )
    return pd.DataFrame.from_records(records, columns=list(CONFUSION_COLUMNS))


# --------------------------------------------------------------------------- files


def _write_tsv(frame: pd.DataFrame, target: Path) -> None:
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, na_rep="NaN")


def _intervals(
    scorers: Sequence[FoldScorer], settings: EvaluationSettings
) -> dict[tuple[str, str, str], tuple[float, float, int]]:
    groups: dict[tuple[str, str], list[FoldScorer]] = {}
    for scorer in scorers:
        groups.setdefault((scorer.model, scorer.task), []).append(scorer)
    if settings.n_boot == 0:
        return {}
    intervals = {}
    for model, task in tqdm(sorted(groups), desc="bootstrap", unit="model-task", disable=None):
        found = bootstrap_intervals(groups[(model, task)], n_boot=settings.n_boot, seed=settings.seed)
        for metric, interval in found.items():
            intervals[(model, task, metric)] = interval
    return intervals


def run_evaluate(
    *,
    prediction_files: Sequence[Path],
    out_folds: Path,
    out_summary: Path,
    out_comparison: Path | None = None,
    out_confusion: Path | None = None,
    settings: EvaluationSettings | None = None,
) -> None:
    """Evaluate all prediction files and write the metric tables atomically.

    ``folds.tsv`` (:data:`FOLD_COLUMNS`), ``summary.tsv`` (:data:`SUMMARY_COLUMNS`) and, when
    their paths are given, the paired model comparison (:data:`COMPARISON_COLUMNS`) and the
    confusion counts (:data:`CONFUSION_COLUMNS`).
    """
    settings = settings or EvaluationSettings()
    scorers = fold_scorers(prediction_files)
    folds_table = _score_table(scorers)
    summary = summarise(folds_table, _intervals(scorers, settings))
    _write_tsv(folds_table, Path(out_folds))
    _write_tsv(summary, Path(out_summary))
    if out_comparison is not None:
        _write_tsv(compare_models(folds_table), Path(out_comparison))
    if out_confusion is not None:
        _write_tsv(confusion_table(scorers), Path(out_confusion))
    log.info(
        "evaluated %d prediction file(s): %d fold metric(s), %d summary row(s), "
        "%d bootstrap replicate(s), seed %d",
        len(prediction_files),
        len(folds_table),
        len(summary),
        settings.n_boot,
        settings.seed,
    )
    for row in summary.itertuples(index=False):
        log.info(
            "%s %s %s: %.4f ± %.4f (%d folds), 95%% CI %.4f-%.4f",
            row.model,
            row.task,
            row.metric,
            row.mean,
            row.sd,
            row.n_folds,
            row.ci_low,
            row.ci_high,
        )

"""Does a model use each modality? Its test metric with one modality permuted across the test patients.

Per trained model and fold (:func:`histofuse.training.ablation.ablation_fold`): the fold's test patients are predicted once as
they are (``full``) and, for each modality the run has (``wsi``, ``genomics``, ``clinical``) and
each of ``repeats`` seeded permutations, with that modality's inputs shuffled among the test
patients: patient ``j`` gets the slides (or genomic row, or clinical row) of test patient
``π(j)``, everything else its own. Every other input of the model is unchanged, so the loss of
accuracy measures how much the model's test predictions rest on that modality. The permutation
is a plain random one (a patient may keep its own row), the same for every model
(seed, fold, modality, repeat).

Across folds (:func:`ablation_table`): per model, task and modality the metric (``auc`` for
grade / diagnosis / binary, ``cindex`` for survival) is computed per fold on the full predictions
and on each permutation; ``full`` and ``permuted`` are means over folds (and repeats), ``drop =
full − permuted``. The 95 % interval of the drop is a percentile bootstrap: in each replicate
the test patients of every fold are resampled with replacement (the same resample for the full
and the permuted predictions), and the drop recomputed. A modality the model does not read
(every permuted prediction equal to the full one) gets no row, and a model that reads fewer than
two modalities gets none at all: the table covers the multi-modal models only.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from histofuse import metrics
from histofuse.errors import HistofuseError
from histofuse.evaluate import (
    _binary_as_two_classes,
    _quiet_metrics,
    classification_tasks,
    has_survival_task,
    probability_columns,
)
from histofuse.io import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "ABLATION_COLUMNS",
    "FULL",
    "MODALITIES",
    "TaskFold",
    "ablation_table",
    "drop_interval",
    "read_ablation_fold",
]

ABLATION_COLUMNS: tuple[str, ...] = (
    "model",
    "task",
    "metric",
    "modality",
    "full",
    "permuted",
    "drop",
    "ci_low",
    "ci_high",
)
FULL = "full"
"""The ``modality`` value of the unpermuted predictions."""
MODALITIES: tuple[str, ...] = ("wsi", "genomics", "clinical")
"""The modalities permuted, in table order."""


@dataclass(frozen=True, kw_only=True)
class TaskFold:
    """One task of one fold: labels of the labelled test patients, full and permuted predictions.

    ``prediction`` arrays are class probabilities ``(n, K)`` (``auc``) or risks ``(n,)`` (``cindex``,
    with ``event``); ``permuted`` maps a modality to one array per repeat.
    """

    metric: str
    y: NDArray[np.float64]
    event: NDArray[np.float64] | None
    full: NDArray[np.float64]
    permuted: dict[str, list[NDArray[np.float64]]]

    @property
    def n(self) -> int:
        return len(self.y)

    def score(self, prediction: NDArray[np.float64], rows: NDArray[np.int64] | None = None) -> float:
        pick = slice(None) if rows is None else rows
        if self.metric == "auc":
            return metrics.multiclass_auc_by_ranks(self.y[pick], prediction[pick])
        assert self.event is not None
        return metrics.cindex(self.y[pick], prediction[pick], self.event[pick])

    def means(self, modality: str, rows: NDArray[np.int64] | None = None) -> tuple[float, float]:
        """The full metric and the mean over repeats of the permuted metric, on ``rows``."""
        permuted = [self.score(prediction, rows) for prediction in self.permuted[modality]]
        return self.score(self.full, rows), float(np.mean(permuted))

    def reads(self, modality: str) -> bool:
        """Whether some permutation of ``modality`` changed some prediction."""
        return any(not np.array_equal(p, self.full) for p in self.permuted.get(modality, []))


def _task_arrays(frame: pd.DataFrame) -> dict[str, tuple[str, pd.Series, list[str], str | None]]:
    """Per task: metric, labelled-row mask, prediction columns and event column."""
    tasks: dict[str, tuple[str, pd.Series, list[str], str | None]] = {}
    for task in classification_tasks(frame):
        tasks[task] = ("auc", frame[task].notna(), probability_columns(frame.columns, task), None)
    if has_survival_task(frame):
        labelled = frame["survival_time"].notna() & frame["event"].notna()
        tasks["survival"] = ("cindex", labelled, ["risk"], "event")
    return tasks


def read_ablation_fold(path: Path) -> tuple[str, dict[str, TaskFold]]:
    """One per-fold file: its model and a :class:`TaskFold` per task."""
    frame = pd.read_parquet(path)
    missing = [c for c in ("model", "fold", "modality", "repeat", "patient_id") if c not in frame.columns]
    if missing or not (frame["modality"] == FULL).any():
        raise HistofuseError(
            f"not a modality-ablation table (lacks {missing or 'the full predictions'}).",
            path=path,
            fix="rerun the modality_ablation rule.",
        )
    _binary_as_two_classes(frame)
    frame = frame.sort_values(["modality", "repeat", "patient_id"], kind="stable")
    full = frame[frame["modality"] == FULL].reset_index(drop=True)
    groups = {key: part.reset_index(drop=True) for key, part in frame.groupby(["modality", "repeat"], sort=True)}
    for (modality, repeat), part in groups.items():
        if not part["patient_id"].equals(full["patient_id"]):
            raise HistofuseError(
                f"the {modality} permutation {repeat} does not cover the full test set.",
                path=path,
                fix="rerun the modality_ablation rule.",
            )
    folds = {}
    for task, (metric, labelled, columns, event) in _task_arrays(full).items():

        def values(
            part: pd.DataFrame, labelled: Any = labelled, columns: list[str] = columns, metric: str = metric
        ) -> NDArray[np.float64]:
            array = part.loc[labelled, columns].to_numpy(dtype=np.float64)
            return array[:, 0] if metric == "cindex" else array

        label = "survival_time" if metric == "cindex" else task
        permuted: dict[str, list[NDArray[np.float64]]] = {}
        for (modality, _repeat), part in groups.items():
            if modality != FULL:
                permuted.setdefault(str(modality), []).append(values(part))
        folds[task] = TaskFold(
            metric=metric,
            y=full.loc[labelled, label].to_numpy(dtype=np.float64),
            event=None if event is None else full.loc[labelled, event].to_numpy(dtype=np.float64),
            full=values(full),
            permuted=permuted,
        )
    return str(full["model"].iloc[0]), folds


def drop_interval(
    folds: Sequence[TaskFold], modality: str, *, n_boot: int, seed: Sequence[int]
) -> tuple[float, float]:
    """Percentile 95 % bootstrap interval of the drop (test patients resampled within each fold)."""
    rng = np.random.default_rng(list(seed))
    drops = []
    with _quiet_metrics():
        for _ in range(n_boot):
            pairs = [fold.means(modality, rng.integers(0, fold.n, size=fold.n)) for fold in folds]
            drop = float(np.mean([full - permuted for full, permuted in pairs]))
            if np.isfinite(drop):
                drops.append(drop)
    if not drops:
        return float("nan"), float("nan")
    low, high = np.percentile(drops, [2.5, 97.5])
    return float(low), float(high)


def _model_rows(model: str, folds: list[dict[str, TaskFold]], *, n_boot: int, seed: int) -> list[dict[str, object]]:
    tasks = sorted(folds[0])
    modalities = [m for m in MODALITIES if any(m in fold[task].permuted for fold in folds for task in fold)]
    read = [m for m in modalities if any(fold[task].reads(m) for fold in folds for task in fold)]
    if len(read) < 2:
        log.info("%s reads %s of the modalities: not multi-modal, no ablation rows", model, read or "none")
        return []
    rows: list[dict[str, object]] = []
    for task in tasks:
        task_folds = [fold[task] for fold in folds]
        for modality in read:
            with _quiet_metrics():
                pairs = [fold.means(modality) for fold in task_folds]
            full = float(np.mean([p[0] for p in pairs]))
            permuted = float(np.mean([p[1] for p in pairs]))
            unit = [seed, *(zlib.crc32(text.encode()) for text in (model, task, modality))]
            low, high = drop_interval(task_folds, modality, n_boot=n_boot, seed=unit)
            rows.append(
                {
                    "model": model,
                    "task": task,
                    "metric": task_folds[0].metric,
                    "modality": modality,
                    "full": full,
                    "permuted": permuted,
                    "drop": full - permuted,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return rows


def ablation_table(paths: Sequence[Path], *, n_boot: int, seed: int, out: Path | None = None) -> pd.DataFrame:
    """The modality-ablation table (:data:`ABLATION_COLUMNS`) from the per-fold files; written to ``out``."""
    by_model: dict[str, list[dict[str, TaskFold]]] = {}
    for path in paths:
        model, folds = read_ablation_fold(Path(path))
        by_model.setdefault(model, []).append(folds)
    records = []
    for model, model_folds in sorted(by_model.items()):
        records.extend(_model_rows(model, model_folds, n_boot=n_boot, seed=seed))
    table = pd.DataFrame.from_records(records, columns=list(ABLATION_COLUMNS))
    table = table.sort_values(["model", "task", "modality"], kind="stable").reset_index(drop=True)
    if out is not None:
        with atomic_path(Path(out)) as tmp:
            table.to_csv(tmp, sep="\t", index=False, na_rep="NaN")
    return table

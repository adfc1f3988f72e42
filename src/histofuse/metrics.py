"""Evaluation metrics for the survival and grade tasks.

Every function takes plain array-likes and returns a Python ``float``. A metric that is undefined
for the data it is given (no events, a single class, no samples) returns ``float("nan")`` and logs a
warning instead of raising, so one degenerate fold does not stop the evaluation of the others.
Inputs that are malformed (mismatched lengths, NaN values, class indices out of range) raise
``ValueError``: callers are expected to drop missing labels before calling.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from lifelines.utils import concordance_index
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

__all__ = ["accuracy", "balanced_accuracy", "cindex", "macro_f1", "multiclass_auc"]

log = logging.getLogger(__name__)

_NAN = float("nan")


def _as_float_vector(values: ArrayLike, name: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN; drop rows with missing values first")
    return array


def _as_class_vector(values: ArrayLike, name: str) -> NDArray[np.int64]:
    array = _as_float_vector(values, name)
    if not np.all(array == np.round(array)):
        raise ValueError(f"{name} must hold integer class indices")
    return array.astype(np.int64)


def _check_lengths(**arrays: NDArray[np.generic]) -> int:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name}={length}" for name, length in lengths.items())
        raise ValueError(f"inputs have different lengths: {detail}")
    return next(iter(lengths.values()))


def cindex(time: ArrayLike, risk: ArrayLike, event: ArrayLike) -> float:
    """Harrell's concordance index of a risk score (higher risk = shorter survival).

    Uses :func:`lifelines.utils.concordance_index` on ``-risk``. A pair is admissible when the
    subject with the shorter time had an event; with tied times only a death paired with a censored
    subject counts. Tied risks count one half. Returns NaN (with a warning) when there is no event
    or no admissible pair.
    """
    time_a = _as_float_vector(time, "time")
    risk_a = _as_float_vector(risk, "risk")
    event_a = _as_float_vector(event, "event")
    _check_lengths(time=time_a, risk=risk_a, event=event_a)
    if not np.isin(event_a, (0.0, 1.0)).all():
        raise ValueError("event must be 0 (censored) or 1 (event)")
    if not event_a.any():
        log.warning("c-index undefined: no events among %d subjects", len(event_a))
        return _NAN
    try:
        return float(concordance_index(time_a, -risk_a, event_a))
    except ZeroDivisionError:
        log.warning("c-index undefined: no admissible pairs among %d subjects", len(event_a))
        return _NAN


def multiclass_auc(y_true: ArrayLike, probs: ArrayLike) -> float:
    """Macro-averaged one-vs-rest ROC AUC for ``K`` classes (``K = probs.shape[1]``).

    ``y_true`` holds class indices in ``range(K)``. When every class occurs in ``y_true`` this is
    :func:`sklearn.metrics.roc_auc_score` with ``multi_class="ovr"``, ``average="macro"``.

    A cross-validation fold may miss a class entirely; its one-vs-rest AUC is then undefined (no
    positives). In that case the macro average is taken over the classes that do occur, each
    scored on its own probability column against all other samples. The probability columns are
    not renormalised: a one-vs-rest AUC depends only on the ranking within one column, so dropping
    a class does not change the AUCs of the others. The same per-class route is used when rows do
    not sum to one (scikit-learn refuses those for the multi-class call) and for ``K = 2`` (where
    it equals the ordinary binary AUC of column 1 when rows sum to one). Returns NaN (with a
    warning) when fewer than two classes occur in ``y_true``.
    """
    prob_a = np.asarray(probs, dtype=np.float64)
    if prob_a.ndim != 2 or prob_a.shape[1] < 2:
        raise ValueError(f"probs must have shape (n, K) with K >= 2, got {prob_a.shape}")
    if np.isnan(prob_a).any():
        raise ValueError("probs contains NaN")
    y = _as_class_vector(y_true, "y_true")
    _check_lengths(y_true=y, probs=prob_a)
    n_classes = prob_a.shape[1]
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"y_true holds class indices outside range({n_classes})")
    present = np.unique(y)
    if len(present) < 2:
        log.warning("AUC undefined: %d class(es) present among %d samples", len(present), len(y))
        return _NAN
    rows_are_probabilities = np.allclose(prob_a.sum(axis=1), 1.0)
    if len(present) == n_classes and rows_are_probabilities and n_classes > 2:
        score = roc_auc_score(
            y, prob_a, multi_class="ovr", average="macro", labels=list(range(n_classes))
        )
        return float(score)
    if len(present) < n_classes:
        log.info(
            "AUC over %d of %d classes (classes %s absent from y_true)",
            len(present),
            n_classes,
            sorted(set(range(n_classes)) - set(present.tolist())),
        )
    per_class = [roc_auc_score(y == c, prob_a[:, c]) for c in present]
    return float(np.mean(per_class))


def _class_pair(
    y_true: ArrayLike, y_pred: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    y = _as_class_vector(y_true, "y_true")
    p = _as_class_vector(y_pred, "y_pred")
    _check_lengths(y_true=y, y_pred=p)
    return y, p


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of correct predictions; NaN for no samples."""
    y, p = _class_pair(y_true, y_pred)
    if len(y) == 0:
        log.warning("accuracy undefined: no samples")
        return _NAN
    return float(accuracy_score(y, p))


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean per-class recall over the classes present in ``y_true``; NaN for no samples."""
    y, p = _class_pair(y_true, y_pred)
    if len(y) == 0:
        log.warning("balanced accuracy undefined: no samples")
        return _NAN
    with warnings.catch_warnings():
        # Predictions of a class absent from y_true are legitimate in a small fold.
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y, p))


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Unweighted mean F1 over the classes in ``y_true`` or ``y_pred``; NaN for no samples.

    A class that is never predicted (or never true) scores F1 = 0 rather than raising.
    """
    y, p = _class_pair(y_true, y_pred)
    if len(y) == 0:
        log.warning("macro F1 undefined: no samples")
        return _NAN
    return float(f1_score(y, p, average="macro", zero_division=0))

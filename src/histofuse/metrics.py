"""Evaluation metrics for the survival and classification tasks.

Every function takes plain array-likes and returns a Python ``float``. A metric that is undefined
for the data it is given (no events, a single class, no samples) returns ``float("nan")`` and logs a
warning instead of raising, so one degenerate fold does not stop the evaluation of the others.
Inputs that are malformed (mismatched lengths, NaN values, class indices out of range) raise
``ValueError``: callers are expected to drop missing labels before calling.

The survival metrics beyond Harrell's c-index come from scikit-survival and weight by the inverse
probability of censoring, estimated by Kaplan–Meier on the survival labels ``train_time``,
``train_event`` (the caller decides which patients; :mod:`histofuse.evaluate` passes every patient
of the fold). They are computed at the times of :func:`evaluation_times`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable

import numpy as np
from lifelines.utils import concordance_index
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc, integrated_brier_score
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

__all__ = [
    "EVALUATION_QUANTILES",
    "accuracy",
    "balanced_accuracy",
    "cindex",
    "class_confusion",
    "evaluation_times",
    "integrated_brier",
    "macro_f1",
    "multiclass_auc",
    "multiclass_auc_by_ranks",
    "km_survival",
    "survival_from_risk",
    "td_auc",
    "uno_cindex",
]

EVALUATION_QUANTILES: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
"""Quantiles of the test times at which time-dependent metrics are evaluated."""

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


def multiclass_auc_by_ranks(y_true: NDArray[np.float64], probs: NDArray[np.float64]) -> float:
    """:func:`multiclass_auc` of probability rows, computed from ranks, without input checks.

    The mean over the classes present in ``y_true`` of the Mann–Whitney AUC of that class's column
    (ties count one half); NaN with fewer than two classes. For rows that sum to one this is the
    value :func:`multiclass_auc` returns, a hundred times faster on small samples: meant for
    bootstrap loops over inputs already checked once.
    """
    from scipy.stats import rankdata

    y = np.asarray(y_true).astype(np.int64)
    present = np.unique(y)
    if len(present) < 2:
        return _NAN
    aucs = []
    for k in present:
        positive = y == k
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        ranks = rankdata(probs[:, k])
        aucs.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs))


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


def class_confusion(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> NDArray[np.int64]:
    """Counts ``(n_classes, n_classes)``: row = true class, column = predicted class."""
    y, p = _class_pair(y_true, y_pred)
    return confusion_matrix(y, p, labels=list(range(n_classes))).astype(np.int64)


# --------------------------------------------------------------------------- survival (sksurv)


def _survival_pair(
    time: ArrayLike, event: ArrayLike, name: str
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    time_a = _as_float_vector(time, f"{name} time")
    event_a = _as_float_vector(event, f"{name} event")
    _check_lengths(time=time_a, event=event_a)
    if not np.isin(event_a, (0.0, 1.0)).all():
        raise ValueError(f"{name} event must be 0 (censored) or 1 (event)")
    return time_a, event_a


def _surv(time: NDArray[np.float64], event: NDArray[np.float64]) -> np.ndarray:
    return Surv.from_arrays(event=event.astype(bool), time=time)


def evaluation_times(
    train_time: ArrayLike,
    time: ArrayLike,
    quantiles: tuple[float, ...] = EVALUATION_QUANTILES,
) -> NDArray[np.float64]:
    """Times for the time-dependent metrics: quantiles of the test times (20th to 80th percentile).

    Only times inside the test follow-up and below the longest time of the censoring sample
    ``train_time`` are kept (the censoring distribution is unknown beyond). May be empty, and then
    the time-dependent metrics are NaN.
    """
    train_a = _as_float_vector(train_time, "train time")
    time_a = _as_float_vector(time, "time")
    if len(time_a) < 2 or len(train_a) == 0:
        return np.empty(0)
    grid = np.unique(np.quantile(time_a, quantiles))
    keep = (grid >= time_a.min()) & (grid < time_a.max()) & (grid < train_a.max())
    return grid[keep]


def _ipcw_metric(name: str, compute: Callable[[], float]) -> float:
    try:
        return float(compute())
    except (ValueError, ZeroDivisionError) as exc:
        log.warning("%s undefined: %s", name, exc)
        return _NAN


def uno_cindex(
    train_time: ArrayLike,
    train_event: ArrayLike,
    time: ArrayLike,
    event: ArrayLike,
    risk: ArrayLike,
    *,
    tau: float,
) -> float:
    """Uno's c-index of ``risk`` (higher = shorter survival), truncated at ``tau``.

    :func:`sksurv.metrics.concordance_index_ipcw`; NaN (with a warning) when undefined.
    """
    train = _surv(*_survival_pair(train_time, train_event, "train"))
    time_a, event_a = _survival_pair(time, event, "test")
    risk_a = _as_float_vector(risk, "risk")
    _check_lengths(time=time_a, risk=risk_a)
    if not event_a.any() or not math.isfinite(tau):
        log.warning("Uno's c-index undefined: no events or no evaluation time")
        return _NAN
    test = _surv(time_a, event_a)
    return _ipcw_metric(
        "Uno's c-index", lambda: concordance_index_ipcw(train, test, risk_a, tau=tau)[0]
    )


def td_auc(
    train_time: ArrayLike,
    train_event: ArrayLike,
    time: ArrayLike,
    event: ArrayLike,
    risk: ArrayLike,
    times: ArrayLike,
) -> float:
    """Mean cumulative/dynamic time-dependent AUC of ``risk`` over ``times``.

    :func:`sksurv.metrics.cumulative_dynamic_auc` (its ``mean_auc``, weighted by the survival
    function); NaN (with a warning) when undefined or ``times`` is empty.
    """
    train = _surv(*_survival_pair(train_time, train_event, "train"))
    time_a, event_a = _survival_pair(time, event, "test")
    risk_a = _as_float_vector(risk, "risk")
    _check_lengths(time=time_a, risk=risk_a)
    times_a = np.asarray(times, dtype=np.float64)
    if times_a.size == 0 or not event_a.any():
        log.warning("time-dependent AUC undefined: no events or no evaluation time")
        return _NAN
    test = _surv(time_a, event_a)
    return _ipcw_metric(
        "time-dependent AUC",
        lambda: cumulative_dynamic_auc(train, test, risk_a, times_a)[1],
    )


def integrated_brier(
    train_time: ArrayLike,
    train_event: ArrayLike,
    time: ArrayLike,
    event: ArrayLike,
    survival: ArrayLike,
    times: ArrayLike,
) -> float:
    """Integrated Brier score of predicted survival probabilities ``(n, len(times))``.

    :func:`sksurv.metrics.integrated_brier_score` (lower is better); NaN (with a warning) when
    undefined or fewer than two ``times``.
    """
    train = _surv(*_survival_pair(train_time, train_event, "train"))
    time_a, event_a = _survival_pair(time, event, "test")
    surv_a = np.asarray(survival, dtype=np.float64)
    times_a = np.asarray(times, dtype=np.float64)
    if times_a.size < 2:
        log.warning("integrated Brier score undefined: fewer than two evaluation times")
        return _NAN
    if surv_a.shape != (len(time_a), len(times_a)):
        raise ValueError(
            f"survival must have shape ({len(time_a)}, {len(times_a)}), got {surv_a.shape}"
        )
    test = _surv(time_a, event_a)
    return _ipcw_metric(
        "integrated Brier score",
        lambda: integrated_brier_score(train, test, surv_a, times_a),
    )


def survival_from_risk(
    train_risk: ArrayLike,
    train_time: ArrayLike,
    train_event: ArrayLike,
    risk: ArrayLike,
    times: ArrayLike,
) -> NDArray[np.float64]:
    """Survival probabilities ``S(t | risk)`` at ``times`` for a model that predicts a risk score.

    A one-covariate Cox model on the risk score is fitted on the fold's training patients
    (:class:`sksurv.linear_model.CoxPHSurvivalAnalysis`, Breslow baseline hazard, a small ridge
    penalty of 1e-4 for stability), so ``S(t | r) = S0(t) ** exp(beta * r)``. The score's scale is
    thereby calibrated on training data only; past the last training time a curve keeps its last
    value. Returns ``(len(risk), len(times))``; all NaN when the
    training patients have no event.
    """
    train_time_a, train_event_a = _survival_pair(train_time, train_event, "train")
    train_risk_a = _as_float_vector(train_risk, "train risk")
    _check_lengths(train_time=train_time_a, train_risk=train_risk_a)
    risk_a = _as_float_vector(risk, "risk")
    times_a = np.asarray(times, dtype=np.float64)
    out = np.full((len(risk_a), len(times_a)), np.nan)
    if not train_event_a.any() or times_a.size == 0 or len(risk_a) == 0:
        log.warning("survival curves undefined: no training event or no evaluation time")
        return out
    model = CoxPHSurvivalAnalysis(alpha=1e-4)
    try:
        model.fit(train_risk_a.reshape(-1, 1), _surv(train_time_a, train_event_a))
    except (ValueError, np.linalg.LinAlgError) as exc:
        log.warning("Cox model on the risk score failed: %s", exc)
        return out
    functions = model.predict_survival_function(risk_a.reshape(-1, 1))
    # Beyond the last training time the curve stays at its last value.
    return np.vstack(
        [function(np.clip(times_a, *function.domain)) for function in functions]
    ).astype(np.float64)


def km_survival(
    train_time: ArrayLike, train_event: ArrayLike, n: int, times: ArrayLike
) -> NDArray[np.float64]:
    """The training patients' Kaplan–Meier curve at ``times``, the same for ``n`` patients.

    The no-information reference for the integrated Brier score. Returns ``(n, len(times))``.
    """
    train_time_a, train_event_a = _survival_pair(train_time, train_event, "train")
    times_a = np.asarray(times, dtype=np.float64)
    if len(train_time_a) == 0 or times_a.size == 0:
        return np.full((n, times_a.size), np.nan)
    grid, curve = kaplan_meier_estimator(train_event_a.astype(bool), train_time_a)
    at = np.searchsorted(grid, times_a, side="right") - 1
    values = np.where(at >= 0, curve[np.clip(at, 0, None)], 1.0)
    return np.tile(values, (n, 1)).astype(np.float64)

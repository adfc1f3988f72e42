from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from histofuse import metrics


def reference_cindex(time: np.ndarray, risk: np.ndarray, event: np.ndarray) -> float:
    """Harrell's C by enumerating every pair (higher risk should mean shorter survival).

    A pair is usable when the earlier time is an event; at equal times only an event paired with a
    censored subject is usable (the censored one outlived the event). Tied risks score one half.
    """
    usable = 0
    score = 0.0
    for i, j in itertools.combinations(range(len(time)), 2):
        if time[i] == time[j]:
            if event[i] == event[j]:
                continue
            first, second = (i, j) if event[i] else (j, i)
        else:
            first, second = (i, j) if time[i] < time[j] else (j, i)
            if not event[first]:
                continue
        usable += 1
        if risk[first] > risk[second]:
            score += 1.0
        elif risk[first] == risk[second]:
            score += 0.5
    return score / usable if usable else float("nan")


@pytest.mark.parametrize("seed", range(8))
def test_cindex_matches_reference_with_ties_and_censoring(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    time = rng.integers(1, 12, size=n).astype(float)  # many tied times
    risk = rng.integers(0, 5, size=n).astype(float)  # many tied risks
    event = (rng.random(n) < 0.6).astype(int)
    event[0] = 1
    expected = reference_cindex(time, risk, event)
    assert metrics.cindex(time, risk, event) == pytest.approx(expected, abs=1e-12)


def test_cindex_matches_reference_continuous() -> None:
    rng = np.random.default_rng(42)
    time = rng.exponential(30.0, size=80)
    risk = -time + rng.normal(0, 20, size=80)
    event = (rng.random(80) < 0.5).astype(int)
    assert metrics.cindex(time, risk, event) == pytest.approx(
        reference_cindex(time, risk, event), abs=1e-12
    )


def test_cindex_perfect_and_reversed() -> None:
    time = np.arange(1.0, 21.0)
    event = np.ones(20, dtype=int)
    assert metrics.cindex(time, -time, event) == pytest.approx(1.0)
    assert metrics.cindex(time, time, event) == pytest.approx(0.0)
    assert metrics.cindex(time, np.zeros(20), event) == pytest.approx(0.5)


def test_cindex_no_events_is_nan_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        value = metrics.cindex([1.0, 2.0, 3.0], [0.1, 0.2, 0.3], [0, 0, 0])
    assert math.isnan(value)
    assert "no events" in caplog.text
    assert math.isnan(metrics.cindex([], [], []))


def test_cindex_no_admissible_pairs_is_nan() -> None:
    # The only event is the longest time: no pair can be ordered.
    assert math.isnan(metrics.cindex([1.0, 2.0, 3.0], [0.1, 0.2, 0.3], [0, 0, 1]))


def test_cindex_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="lengths"):
        metrics.cindex([1.0, 2.0], [0.1], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        metrics.cindex([1.0, float("nan")], [0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        metrics.cindex([1.0, 2.0], [0.1, float("nan")], [1, 1])
    with pytest.raises(ValueError, match="event"):
        metrics.cindex([1.0, 2.0], [0.1, 0.2], [1, 2])


PROBS = np.array(
    [
        [0.8, 0.1, 0.1],
        [0.3, 0.4, 0.3],
        [0.2, 0.7, 0.1],
        [0.4, 0.3, 0.3],
        [0.1, 0.2, 0.7],
        [0.5, 0.2, 0.3],
    ]
)
LABELS = np.array([0, 0, 1, 1, 2, 2])


def test_multiclass_auc_known_example() -> None:
    # One-vs-rest AUCs by counting pairs: class 0 6/8, class 1 7/8, class 2 7/8 (one tie each).
    assert metrics.multiclass_auc(LABELS, PROBS) == pytest.approx((0.75 + 0.875 + 0.875) / 3)


def test_multiclass_auc_perfect() -> None:
    assert metrics.multiclass_auc(LABELS, np.eye(3)[LABELS]) == pytest.approx(1.0)


def test_multiclass_auc_with_absent_class() -> None:
    # Class 2 absent: mean of the class-0 (3/4) and class-1 (3/4) one-vs-rest AUCs.
    assert metrics.multiclass_auc(LABELS[:4], PROBS[:4]) == pytest.approx(0.75)


def test_multiclass_auc_unnormalised_rows_use_per_class_route() -> None:
    scaled = PROBS * np.array([[1.0], [2.0], [0.5], [1.0], [3.0], [1.0]])
    per_class = np.mean(
        [
            metrics.multiclass_auc((LABELS == c).astype(int), np.c_[1 - scaled[:, c], scaled[:, c]])
            for c in range(3)
        ]
    )
    assert metrics.multiclass_auc(LABELS, scaled) == pytest.approx(per_class)


def test_multiclass_auc_single_class_is_nan() -> None:
    assert math.isnan(metrics.multiclass_auc([1, 1, 1], PROBS[:3]))
    assert math.isnan(metrics.multiclass_auc([], np.empty((0, 3))))


def test_multiclass_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="outside"):
        metrics.multiclass_auc([0, 3], PROBS[:2])
    with pytest.raises(ValueError, match="NaN"):
        metrics.multiclass_auc([0, 1], np.array([[0.5, 0.5], [float("nan"), 0.5]]))
    with pytest.raises(ValueError, match="lengths"):
        metrics.multiclass_auc([0, 1, 2], PROBS[:2])


def test_classification_metrics() -> None:
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    assert metrics.balanced_accuracy(y_true, y_pred) == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    # F1 per class: 0 -> 1/2, 1 -> 4/5, 2 -> 2/3.
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    for fn in (metrics.accuracy, metrics.balanced_accuracy, metrics.macro_f1):
        assert math.isnan(fn([], []))


def test_multiclass_auc_two_classes_equals_binary_auc() -> None:
    y = np.array([0, 1, 0, 1, 1])
    p1 = np.array([0.2, 0.9, 0.6, 0.4, 0.7])
    # Pairs (pos, neg): 0.9 beats both, 0.4 beats 0.2 only, 0.7 beats both -> 5/6.
    assert metrics.multiclass_auc(y, np.c_[1 - p1, p1]) == pytest.approx(5 / 6)

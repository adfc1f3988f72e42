from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from histofuse.errors import HistofuseError
from histofuse.losses import (
    masked_cross_entropy,
    risk_from_logits,
    survival_bins,
    survival_curve,
    survival_nll,
    to_bin,
)


def _logit(p: list[float]) -> list[float]:
    return [math.log(x / (1 - x)) for x in p]


HAZARDS = [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5], [0.25, 0.6, 0.2, 0.9]]
LOGITS = torch.tensor([_logit(row) for row in HAZARDS], dtype=torch.float64)
BINS = torch.tensor([2, 1, 0])
CENSORED = torch.tensor([0.0, 1.0, 0.0])

# By hand: patient 0 dies in bin 2 -> -(log S_1 + log h_2) = -(log 0.9 + log 0.8 + log 0.3);
# patient 1 censored in bin 1 -> -log S_1 = -(log 0.5 + log 0.5); patient 2 dies in bin 0 -> -log 0.25.
UNCENSORED = [-(math.log(0.9) + math.log(0.8) + math.log(0.3)), 0.0, -math.log(0.25)]
CENSORED_TERMS = [0.0, -(2 * math.log(0.5)), 0.0]


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_survival_nll_matches_hand_computation(alpha: float) -> None:
    expected = [(1 - alpha) * (u + c) + alpha * u for u, c in zip(UNCENSORED, CENSORED_TERMS, strict=True)]
    per_sample = survival_nll(LOGITS, BINS, CENSORED, alpha=alpha, reduction="none")
    assert per_sample.tolist() == pytest.approx(expected, rel=1e-12)
    mean = survival_nll(LOGITS, BINS, CENSORED, alpha=alpha)
    assert float(mean) == pytest.approx(sum(expected) / 3, rel=1e-12)
    total = survival_nll(LOGITS, BINS, CENSORED, alpha=alpha, reduction="sum")
    assert float(total) == pytest.approx(sum(expected), rel=1e-12)


def test_survival_nll_mask_ignores_missing_labels() -> None:
    mask = torch.tensor([True, False, True])
    bins = torch.tensor([2, -1, 0])
    loss = survival_nll(LOGITS, bins, CENSORED, mask, alpha=0.4)
    assert float(loss) == pytest.approx((UNCENSORED[0] + UNCENSORED[2]) / 2, rel=1e-12)
    # the default mask treats negative bins as missing
    assert float(survival_nll(LOGITS, bins, CENSORED, alpha=0.4)) == pytest.approx(float(loss))


def test_survival_nll_all_masked_is_zero_with_gradient() -> None:
    logits = LOGITS.clone().requires_grad_(True)
    loss = survival_nll(logits, torch.full((3,), -1), CENSORED)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_survival_nll_is_finite_for_extreme_logits() -> None:
    logits = torch.tensor([[-200.0, 200.0, -50.0, 80.0], [300.0, -300.0, 0.0, 0.0]], requires_grad=True)
    loss = survival_nll(logits, torch.tensor([3, 2]), torch.tensor([0.0, 1.0]))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_masked_cross_entropy_equals_torch_on_unmasked() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=generator)
    target = torch.tensor([0, 2, -1, 1, 2, -1])
    keep = target >= 0
    expected = F.cross_entropy(logits[keep], target[keep])
    assert float(masked_cross_entropy(logits, target)) == pytest.approx(float(expected), rel=1e-6)

    weight = torch.tensor([0.5, 2.0, 1.0])
    expected_weighted = F.cross_entropy(logits[keep], target[keep], weight=weight)
    got = masked_cross_entropy(logits, target, keep, weight=weight)
    assert float(got) == pytest.approx(float(expected_weighted), rel=1e-6)

    per_sample = masked_cross_entropy(logits, target, reduction="none")
    assert per_sample[~keep].tolist() == [0.0, 0.0]


def test_masked_cross_entropy_all_masked_is_zero() -> None:
    logits = torch.randn(2, 3, requires_grad=True)
    loss = masked_cross_entropy(logits, torch.tensor([-1, -1]))
    loss.backward()
    assert loss.item() == 0.0


def test_survival_bins_are_quartiles_of_uncensored_train_times() -> None:
    times = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 100.0, 200.0, np.nan])
    events = pd.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1], dtype="Int64")
    edges = survival_bins(times, events, n_bins=4)
    uncensored = times[:8]
    assert edges.shape == (5,)
    assert edges[0] == 0.0 and np.isinf(edges[-1])
    np.testing.assert_allclose(edges[1:-1], np.quantile(uncensored, [0.25, 0.5, 0.75]))


def test_survival_bins_without_any_time_fails() -> None:
    with pytest.raises(HistofuseError):
        survival_bins([np.nan], [1.0])


def test_to_bin_assigns_half_open_intervals() -> None:
    edges = np.array([0.0, 2.0, 4.0, 6.0, np.inf])
    times = [0.0, 1.9, 2.0, 5.0, 6.0, 1e9, np.nan, -1.0]
    assert to_bin(times, edges).tolist() == [0, 0, 1, 2, 3, 3, -1, 0]


def test_risk_is_minus_sum_of_survival() -> None:
    survival = survival_curve(LOGITS)
    expected_first = [0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7, 0.9 * 0.8 * 0.7 * 0.6]
    assert survival[0].tolist() == pytest.approx(expected_first, rel=1e-12)
    risk = risk_from_logits(LOGITS)
    assert float(risk[0]) == pytest.approx(-sum(expected_first), rel=1e-12)
    low, high = torch.full((1, 4), -3.0), torch.full((1, 4), 3.0)
    assert float(risk_from_logits(high)) > float(risk_from_logits(low))

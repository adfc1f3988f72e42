from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from histofuse.errors import HistofuseError
from histofuse.losses import (
    cox_partial_nll,
    distillation_loss,
    gene_guided_consistency,
    masked_bce,
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


# --- Cox partial likelihood ---------------------------------------------------------------------


def _cox_data() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    time = rng.exponential(scale=np.exp(-0.8 * x))  # continuous times: no ties
    event = (rng.uniform(size=30) < 0.7).astype(int)
    return pd.DataFrame({"x": x, "T": time, "E": event})


def test_cox_loss_equals_lifelines_partial_log_likelihood() -> None:
    from lifelines import CoxPHFitter

    data = _cox_data()
    assert data["T"].is_unique
    fitter = CoxPHFitter().fit(data, duration_col="T", event_col="E")
    beta = torch.tensor(float(fitter.params_["x"]), dtype=torch.float64, requires_grad=True)
    x = torch.tensor(data["x"].to_numpy())
    loss = cox_partial_nll(
        beta * x, torch.tensor(data["T"].to_numpy()), torch.tensor(data["E"].to_numpy()), reduction="sum"
    )
    assert float(loss.detach()) == pytest.approx(-fitter.log_likelihood_, rel=1e-8)
    loss.backward()  # lifelines' estimate maximises the likelihood: zero score
    assert abs(float(beta.grad)) < 1e-4
    mean = cox_partial_nll(beta * x, torch.tensor(data["T"].to_numpy()), torch.tensor(data["E"].to_numpy()))
    assert float(mean.detach()) == pytest.approx(float(loss.detach()) / data["E"].sum(), rel=1e-12)


def test_cox_loss_handles_tied_times_like_breslow() -> None:
    risk = torch.tensor([0.5, -0.2, 0.1, 0.3, 1.0], dtype=torch.float64)
    time = torch.tensor([1.0, 1.0, 2.0, 3.0, 1.0])
    event = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])
    # t=1: events 0 and 1 share the risk set {0, 1, 2, 3, 4}; t=3: event 3 with risk set {3}.
    everyone = math.log(sum(math.exp(r) for r in [0.5, -0.2, 0.1, 0.3, 1.0]))
    expected = -((0.5 - everyone) + (-0.2 - everyone) + (0.3 - 0.3))
    assert float(cox_partial_nll(risk, time, event, reduction="sum")) == pytest.approx(expected, rel=1e-12)
    order = torch.tensor([3, 0, 4, 2, 1])
    shuffled = cox_partial_nll(risk[order], time[order], event[order], reduction="sum")
    assert float(shuffled) == pytest.approx(expected, rel=1e-12)


def test_cox_loss_mask_removes_samples_from_risk_sets() -> None:
    risk = torch.tensor([[0.5], [-0.2], [0.1], [0.3]], dtype=torch.float64)
    time = torch.tensor([1.0, 2.0, 3.0, float("nan")])
    event = torch.tensor([1.0, 1.0, 0.0, float("nan")])
    mask = torch.tensor([True, False, True, False])
    masked = cox_partial_nll(risk, time, event, mask)
    subset = cox_partial_nll(risk[[0, 2]], time[[0, 2]], event[[0, 2]])
    assert float(masked) == pytest.approx(float(subset), rel=1e-12)
    # the default mask drops the sample without a time
    assert float(cox_partial_nll(risk[[0, 2, 3]], time[[0, 2, 3]], event[[0, 2, 3]])) == pytest.approx(
        float(subset)
    )


def test_cox_loss_without_events_is_zero_with_gradient() -> None:
    risk = torch.randn(4, requires_grad=True)
    loss = cox_partial_nll(risk, torch.arange(4.0), torch.zeros(4))
    loss.backward()
    assert loss.item() == 0.0 and risk.grad is not None


@pytest.mark.parametrize(
    ("time", "event", "mask", "match"),
    [
        ([1.0, 2.0], [1.0, 2.0], None, "event must be 0"),
        ([1.0, float("nan")], [1.0, 0.0], [True, True], "time"),
        ([1.0, 2.0, 3.0], [1.0, 0.0], None, "one value per sample"),
    ],
)
def test_cox_loss_validates_inputs(time: list, event: list, mask: list | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cox_partial_nll(
            torch.zeros(2),
            torch.tensor(time),
            torch.tensor(event),
            None if mask is None else torch.tensor(mask),
        )


# --- binary cross-entropy --------------------------------------------------------------------


def test_masked_bce_equals_torch_on_labelled_samples() -> None:
    logits = torch.tensor([[0.3], [-1.2], [2.0], [0.0]])
    target = torch.tensor([1.0, 0.0, -1.0, 1.0])
    keep = target >= 0
    expected = F.binary_cross_entropy_with_logits(logits[keep, 0], target[keep])
    assert float(masked_bce(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    weighted = F.binary_cross_entropy_with_logits(logits[keep, 0], target[keep], pos_weight=torch.tensor(3.0))
    assert float(masked_bce(logits, target, pos_weight=3.0)) == pytest.approx(float(weighted), rel=1e-6)
    assert masked_bce(logits, target, reduction="none")[2].item() == 0.0


def test_masked_bce_rejects_labelled_values_other_than_0_or_1() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        masked_bce(torch.zeros(2), torch.tensor([0.5, 1.0]), torch.tensor([True, True]))


# --- distillation ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["softmax", "sigmoid", "risk"])
def test_distillation_is_zero_for_equal_logits_and_positive_otherwise(kind: str) -> None:
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(5, 3, generator=generator)
    assert float(distillation_loss(teacher.clone(), teacher, kind=kind, temperature=2.0)) == pytest.approx(
        0.0, abs=1e-6
    )
    student = torch.randn(5, 3, generator=generator)
    assert float(distillation_loss(student, teacher, kind=kind, temperature=2.0)) > 0


def test_softmax_distillation_is_scaled_kl_and_leaves_the_teacher_alone() -> None:
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(4, 3, generator=generator, requires_grad=True)
    teacher = torch.randn(4, 3, generator=generator, requires_grad=True)
    mask = torch.tensor([True, True, False, True])
    loss = distillation_loss(student, teacher, kind="softmax", temperature=3.0, mask=mask)
    expected = (
        F.kl_div(
            F.log_softmax(student[mask] / 3, dim=1),
            F.log_softmax(teacher[mask] / 3, dim=1),
            log_target=True,
            reduction="batchmean",
        )
        * 9
    )
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    loss.backward()
    assert teacher.grad is None and student.grad is not None
    assert torch.all(student.grad[2] == 0)


# --- gene-guided consistency -------------------------------------------------------------------


def test_gene_guided_consistency_on_three_patients_by_hand() -> None:
    # genes (1,0), (0,1), (1,1): Gram [[1,0,1],[0,1,1],[1,1,2]], row norms √2, √2, √6.
    # positions (1,0), (1,0), (0,1) (one group): Gram [[1,1,0],[1,1,0],[0,0,1]], norms √2, √2, 1.
    # squared differences: row 1: 0 + 1/2 + 1/2; row 2: 1/2 + 0 + 1/2;
    # row 3: 1/6 + 1/6 + (2/√6 - 1)²; total 4 - 4/√6, divided by 3 patients.
    genes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    positions = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64, requires_grad=True)
    loss = gene_guided_consistency(genes, positions)
    assert float(loss.detach()) == pytest.approx((4 - 4 / math.sqrt(6)) / 3)
    loss.backward()
    # the gene embeddings are learned: the loss reaches them as well as the positions
    assert genes.grad is not None and genes.grad.abs().sum() > 0
    assert positions.grad is not None and positions.grad.abs().sum() > 0


def test_gene_guided_consistency_averages_the_groups_similarities() -> None:
    genes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    # group 1 as above, group 2 relates the patients exactly as the genes do (positions = genes)
    positions = torch.stack([torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64), genes], dim=1)
    # the mean similarity is halfway, so every difference halves: a quarter of the one-group loss
    expected = (4 - 4 / math.sqrt(6)) / 3 / 4
    assert float(gene_guided_consistency(genes, positions)) == pytest.approx(expected)
    assert float(gene_guided_consistency(genes, genes.unsqueeze(1) * 3.0)) == pytest.approx(0.0, abs=1e-12)


def test_gene_guided_consistency_of_one_patient_is_zero() -> None:
    genes = torch.randn(1, 3, requires_grad=True)
    loss = gene_guided_consistency(genes, torch.randn(1, 2, 8))
    loss.backward()
    assert loss.item() == 0.0
    with pytest.raises(ValueError, match="one batch"):
        gene_guided_consistency(torch.randn(2, 3), torch.randn(3, 2, 8))

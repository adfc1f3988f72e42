from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from histofuse.losses import risk_from_logits
from histofuse.metrics import cindex
from histofuse.models import TaskSpec, build_model
from histofuse.models.gradient_coordination import (
    accumulate_gradients,
    classification_confidence,
    coordinate,
    coordinated_backward,
    coordinated_gradients,
    survival_confidence,
)


def _vec(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_less_confident_branch_is_projected_and_keeps_its_norm() -> None:
    g_a, g_b = _vec(1, 0), _vec(-1, 1)
    new_a, new_b = coordinate(g_a, g_b, 0.9, 0.6)
    assert torch.equal(new_a, g_a)
    # (-1, 1) - ((-1)/1) (1, 0) = (0, 1), rescaled to the norm sqrt(2)
    assert new_b.tolist() == pytest.approx([0.0, math.sqrt(2)])


def test_roles_swap_with_the_confidences() -> None:
    g_a, g_b = _vec(1, 0), _vec(-1, 1)
    new_a, new_b = coordinate(g_a, g_b, 0.2, 0.7)
    assert torch.equal(new_b, g_b)
    # (1, 0) - (-1/2) (-1, 1) = (0.5, 0.5), rescaled to norm 1
    assert new_a.tolist() == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2)])


def test_equal_confidences_project_both() -> None:
    new_a, new_b = coordinate(_vec(1, 0), _vec(-1, 1), 0.5, 0.5)
    assert new_a.tolist() == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2)])
    assert new_b.tolist() == pytest.approx([0.0, math.sqrt(2)])


@pytest.mark.parametrize("g_b", [_vec(1, 1), _vec(0, 3), _vec(0, 0)])
def test_without_conflict_gradients_are_unchanged(g_b: torch.Tensor) -> None:
    g_a = _vec(1, 0)
    new_a, new_b = coordinate(g_a, g_b, 0.1, 0.9)
    assert torch.equal(new_a, g_a) and torch.equal(new_b, g_b)


def test_exactly_opposite_gradient_becomes_zero() -> None:
    _, new_b = coordinate(_vec(2, 0), _vec(-1, 0), 0.9, 0.1)
    assert new_b.tolist() == [0.0, 0.0]


def test_coordinate_keeps_shapes_of_matrices() -> None:
    g_a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    g_b = torch.tensor([[-1.0, 1.0], [0.0, 0.0]])
    _, new_b = coordinate(g_a, g_b, 1.0, 0.0)
    assert new_b.shape == (2, 2)
    assert new_b.flatten().tolist() == pytest.approx([0.0, math.sqrt(2), 0.0, 0.0])


@pytest.mark.parametrize(("conf_a", "conf_b"), [(math.nan, 0.5), (0.5, math.inf)])
def test_coordinate_refuses_undefined_confidence(conf_a: float, conf_b: float) -> None:
    with pytest.raises(ValueError, match="finite confidence"):
        coordinate(_vec(1, 0), _vec(-1, 1), conf_a, conf_b)


def test_coordinate_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        coordinate(_vec(1, 0), _vec(1, 0, 0), 0.5, 0.4)


vectors = st.lists(st.floats(-10, 10, allow_nan=False), min_size=5, max_size=5)


@settings(max_examples=60, deadline=None)
@given(a=vectors, b=vectors, conf_a=st.floats(0, 1), conf_b=st.floats(0, 1))
def test_projected_gradient_is_orthogonal_and_keeps_its_norm(
    a: list[float], b: list[float], conf_a: float, conf_b: float
) -> None:
    g_a, g_b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    new_a, new_b = coordinate(g_a, g_b, conf_a, conf_b)
    conflict = float(g_a @ g_b) < 0
    if not conflict:
        assert torch.equal(new_a, g_a) and torch.equal(new_b, g_b)
        return
    for original, new, other, projected in (
        (g_a, new_a, g_b, conf_a <= conf_b),
        (g_b, new_b, g_a, conf_b <= conf_a),
    ):
        if not projected:
            assert torch.equal(new, original)
            continue
        if float(torch.linalg.vector_norm(new)) == 0.0:  # exactly (anti)parallel to the other
            continue
        assert float(new @ other) == pytest.approx(
            0.0, abs=1e-9 * float(original.norm() * other.norm()) + 1e-12
        )
        assert float(new.norm()) == pytest.approx(float(original.norm()), rel=1e-9)


# --- confidence -----------------------------------------------------------------------------


def test_classification_confidence_is_mean_true_class_probability() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]]))
    target = torch.tensor([0, 2, -1])
    assert classification_confidence(logits, target) == pytest.approx((0.7 + 0.3) / 2)
    binary = torch.tensor([[math.log(4.0)], [0.0]])  # sigmoid: 0.8 and 0.5
    assert classification_confidence(binary, torch.tensor([0.0, 1.0])) == pytest.approx((0.2 + 0.5) / 2)
    assert math.isnan(classification_confidence(logits, torch.tensor([-1, -1, -1])))


def test_survival_confidence_is_batch_concordance() -> None:
    time = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    event = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    assert survival_confidence(-time, time, event) == pytest.approx(1.0)
    assert survival_confidence(time, time, event) == pytest.approx(0.0)
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    risk = risk_from_logits(logits)
    assert survival_confidence(risk, time, event) == pytest.approx(
        cindex(time.numpy(), risk.numpy(), event.numpy())
    )
    assert math.isnan(survival_confidence(-time, time, torch.zeros(5)))


# --- applying it to parameters -------------------------------------------------------------


def test_coordinated_gradients_on_shared_parameters() -> None:
    shared = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    unreached = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    loss_a = shared @ _vec(1, 0)  # gradient (1, 0)
    loss_b = shared @ _vec(-1, 1)  # gradient (-1, 1)
    combined = coordinated_gradients(loss_a, loss_b, [shared, unreached], conf_a=0.8, conf_b=0.3)
    assert combined[0].tolist() == pytest.approx([1.0, math.sqrt(2)])
    assert combined[1].tolist() == [0.0, 0.0, 0.0]
    shared.grad = _vec(1, 1)
    accumulate_gradients([shared, unreached], combined)
    assert shared.grad.tolist() == pytest.approx([2.0, 1 + math.sqrt(2)])
    assert unreached.grad is not None and unreached.grad.tolist() == [0.0, 0.0, 0.0]


def test_coordinated_backward_coordinates_only_the_shared_parameters() -> None:
    shared = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    own_a = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    own_b = nn.Parameter(torch.tensor(3.0, dtype=torch.float64))
    loss_a = own_a * (shared @ _vec(1, 0)) + own_a  # d/dshared = 2 (1, 0), d/down_a = 1
    loss_b = own_b * (shared @ _vec(-1, 1))  # d/dshared = 3 (-1, 1), d/down_b = 0
    coordinated_backward(
        loss_a, loss_b, parameters=[shared, own_a, own_b], shared=[shared], conf_a=0.9, conf_b=0.1
    )
    # (-3, 3) projected against (2, 0) gives (0, 3), rescaled to norm 3 sqrt(2)
    assert shared.grad.tolist() == pytest.approx([2.0, 3 * math.sqrt(2)])
    assert own_a.grad.item() == pytest.approx(1.0)
    assert own_b.grad.item() == pytest.approx(0.0)


def test_coordinated_backward_needs_shared_parameters_among_all() -> None:
    shared = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="also be listed"):
        coordinated_backward(
            shared.sum(), shared.sum(), parameters=[], shared=[shared], conf_a=1.0, conf_b=0.0
        )


def test_coordinated_step_on_ksf_branches() -> None:
    torch.manual_seed(0)
    spec = TaskSpec(tasks=("grade",), n_classes=2)
    model = build_model(
        "ksf",
        n_tiles_dim=4,
        n_genomic=4,
        task_spec=spec,
        subspaces={"tumour": [0, 1], "microenvironment": [2, 3]},
        hidden_dim=8,
        dropout=0.0,
        n_heads=2,
        n_points=4,
    )
    coords = [torch.tensor([[0, 0], [256, 0], [0, 256]]), torch.tensor([[512, 512], [768, 512]])]
    bags = [torch.randn(3, 4), torch.randn(2, 4)]
    outputs = model(bags, torch.randn(2, 4), coords=coords)
    target = torch.tensor([0, 1])
    losses = {
        name: nn.functional.cross_entropy(logits["grade"], target)
        for name, logits in outputs["branch_logits"].items()
    }
    confidences = {
        name: classification_confidence(logits["grade"], target)
        for name, logits in outputs["branch_logits"].items()
    }
    shared = list(model.shared_parameters())
    combined = coordinated_gradients(
        losses["tumour"],
        losses["microenvironment"],
        shared,
        confidences["tumour"],
        confidences["microenvironment"],
    )
    assert [g.shape for g in combined] == [p.shape for p in shared]
    assert all(torch.isfinite(g).all() for g in combined)
    assert any(g.abs().sum() > 0 for g in combined)
    plain = torch.autograd.grad(
        losses["tumour"] + losses["microenvironment"], shared, allow_unused=True, retain_graph=True
    )
    g_t = torch.autograd.grad(losses["tumour"], shared, allow_unused=True, retain_graph=True)
    g_m = torch.autograd.grad(losses["microenvironment"], shared, allow_unused=True)

    def flat(grads: tuple) -> torch.Tensor:
        return torch.cat(
            [(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(shared, grads, strict=True)]
        )

    if float(flat(g_t) @ flat(g_m)) >= 0:
        assert torch.allclose(flat(combined), flat(plain))
    else:
        assert not torch.allclose(flat(combined), flat(plain))

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from histofuse.losses import risk_from_logits
from histofuse.metrics import cindex
from histofuse.models import InputDims, TaskSpec, build_model
from histofuse.models.gradient_coordination import (
    classification_confidence,
    coordinate,
    coordinate_rows,
    resolve_conflict,
    survival_confidence,
)


def _vec(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# --- one conflict, by hand -------------------------------------------------------------------
# g = (-1, 1) conflicts with h = (1, 0): p = (g·h / ‖h‖²) h = (-1, 0).
# project: g - p = (0, 1).
# reflect (the authors' code): g - 2p = (1, 1), rescaled to ‖g - p‖ = 1: (1/√2, 1/√2).


def test_projection_removes_the_conflicting_component() -> None:
    assert resolve_conflict(_vec(-1, 1), _vec(1, 0), "project").tolist() == pytest.approx([0.0, 1.0])


def test_reflection_subtracts_the_projection_twice() -> None:
    reflected = resolve_conflict(_vec(-1, 1), _vec(1, 0), "reflect")
    assert reflected.tolist() == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2)])
    # unlike the projection it now points along h: the conflict is turned into agreement
    assert float(reflected @ _vec(1, 0)) > 0


def test_a_second_case_by_hand() -> None:
    # g = (1, -2, 0), h = (0, 1, 1): g·h = -2, ‖h‖² = 2, p = (0, -1, -1)
    g, h = _vec(1, -2, 0), _vec(0, 1, 1)
    assert resolve_conflict(g, h, "project").tolist() == pytest.approx([1.0, -1.0, 1.0])
    # g - 2p = (1, 0, 2), norm √5; ‖g - p‖ = √3
    expected = [value * math.sqrt(3) / math.sqrt(5) for value in (1.0, 0.0, 2.0)]
    assert resolve_conflict(g, h, "reflect").tolist() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["project", "reflect"])
def test_the_less_confident_half_gives_way(mode: str) -> None:
    g_a, g_b = _vec(1, 0), _vec(-1, 1)
    new_a, new_b = coordinate(g_a, g_b, 0.9, 0.6, mode)
    assert torch.equal(new_a, g_a)
    assert torch.allclose(new_b, resolve_conflict(g_b, g_a, mode))
    new_a, new_b = coordinate(g_a, g_b, 0.2, 0.7, mode)
    assert torch.equal(new_b, g_b)
    assert torch.allclose(new_a, resolve_conflict(g_a, g_b, mode))


@pytest.mark.parametrize(
    ("g_b", "conf_a", "conf_b", "mode"),
    [
        (_vec(1, 1), 0.1, 0.9, "project"),  # no conflict
        (_vec(0, 3), 0.1, 0.9, "reflect"),  # orthogonal: no conflict
        (_vec(0, 0), 0.1, 0.9, "project"),  # zero half
        (_vec(-1, 1), 0.5, 0.5, "project"),  # equal confidences
        (_vec(-1, 1), math.nan, 0.5, "project"),  # confidence undefined on the batch
        (_vec(-1, 1), 0.1, 0.9, "none"),
    ],
)
def test_halves_are_left_alone(g_b: torch.Tensor, conf_a: float, conf_b: float, mode: str) -> None:
    g_a = _vec(1, 0)
    new_a, new_b = coordinate(g_a, g_b, conf_a, conf_b, mode)
    assert torch.equal(new_a, g_a) and torch.equal(new_b, g_b)


def test_rows_are_coordinated_one_by_one() -> None:
    # row 0 conflicts ((1, 0) vs (-1, 1)); row 1 agrees ((1, 1) vs (2, 0))
    gradient = torch.tensor([[1.0, 0.0, -1.0, 1.0], [1.0, 1.0, 2.0, 0.0]], dtype=torch.float64)
    projected = coordinate_rows(gradient, 2, conf_a=0.3, conf_b=0.8)
    assert projected[0].tolist() == pytest.approx([0.5, 0.5, -1.0, 1.0])  # (1,0) - (-1/2)(-1,1)
    assert torch.equal(projected[1], gradient[1])
    reflected = coordinate_rows(gradient, 2, conf_a=0.3, conf_b=0.8, mode="reflect")
    # (1, 0) - 2 (0.5, -0.5) = (0, 1), rescaled to ‖(0.5, 0.5)‖ = 1/√2
    assert reflected[0].tolist() == pytest.approx([0.0, 1 / math.sqrt(2), -1.0, 1.0])
    with pytest.raises(ValueError, match="split"):
        coordinate_rows(gradient, 3, 0.1, 0.2)


def test_coordinate_refuses_mismatched_shapes_and_modes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        coordinate(_vec(1, 0), _vec(1, 0, 0), 0.5, 0.4)
    with pytest.raises(ValueError, match="mode"):
        coordinate(_vec(1, 0), _vec(-1, 0), 0.5, 0.4, "pcgrad")


vectors = st.lists(st.floats(-10, 10, allow_nan=False), min_size=5, max_size=5)


@settings(max_examples=60, deadline=None)
@given(a=vectors, b=vectors)
def test_projection_is_orthogonal_and_reflection_keeps_the_projected_norm(a: list[float], b: list[float]) -> None:
    g, h = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    if float(g @ h) >= 0 or float(h.norm()) == 0.0:
        return
    projected = resolve_conflict(g, h, "project")
    scale = float(g.norm() * h.norm()) + 1e-12
    assert float(projected @ h) == pytest.approx(0.0, abs=1e-9 * scale)
    reflected = resolve_conflict(g, h, "reflect")
    assert float(reflected.norm()) == pytest.approx(float(projected.norm()), rel=1e-9, abs=1e-12)
    assert float(reflected @ h) >= -1e-9 * scale  # the reflection never conflicts with h


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


# --- on the model ---------------------------------------------------------------------------


def test_half_logits_split_the_fused_head() -> None:
    torch.manual_seed(0)
    spec = TaskSpec(tasks=("grade",), n_classes=2)
    model = build_model(
        "ksf",
        InputDims(n_tiles_dim=4, n_genomic=4, subspaces={"tumour": [0, 1], "microenvironment": [2, 3]}),
        task_spec=spec,
        hidden_dim=8,
        dropout=0.0,
        n_heads=2,
        offset_groups=2,
        head_dim=4,
    )
    coords = [torch.tensor([[0, 0], [256, 0], [0, 256]]), torch.tensor([[512, 512], [768, 512]])]
    outputs = model([torch.randn(3, 4), torch.randn(2, 4)], torch.randn(2, 4), coords=coords)
    tumour, micro = outputs["half_logits"]["grade"]
    # the halves add up to the fused logits (each carries half the bias)
    assert torch.allclose(tumour + micro, outputs["grade"].detach(), atol=1e-6)
    head = model.coordination_heads()["grade"]
    expected = outputs["branches"]["tumour"].detach() @ head.weight[:, :8].detach().t() + head.bias.detach() / 2
    assert torch.allclose(tumour, expected, atol=1e-6)

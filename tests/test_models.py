from __future__ import annotations

import pytest
import torch
from torch import nn

from histofuse.errors import ConfigError
from histofuse.models import (
    MODELS,
    GatedAttentionMIL,
    MultimodalBaseline,
    SelfNormalizingNetwork,
    TaskSpec,
    build_model,
    register_model,
)

SPEC = TaskSpec(tasks=("grade", "survival"), n_classes=3, n_bins=4)


def _model(n_genomic: int = 5, spec: TaskSpec = SPEC) -> nn.Module:
    torch.manual_seed(0)
    return build_model(
        "mm_baseline", n_tiles_dim=8, n_genomic=n_genomic, task_spec=spec, hidden_dim=16, dropout=0.1
    )


def test_forward_backward_with_list_of_bags_and_empty_bag() -> None:
    model = _model()
    assert isinstance(model, MultimodalBaseline)
    bags = [torch.randn(7, 8), torch.zeros(0, 8), torch.randn(1, 8)]
    genomics = torch.randn(3, 5)
    outputs = model(bags, genomics)
    assert outputs["grade"].shape == (3, 3)
    assert outputs["survival"].shape == (3, 4)
    attention = outputs["attention"]
    assert [a.shape[0] for a in attention] == [7, 0, 1]
    loss = outputs["grade"].sum() + outputs["survival"].sum()
    loss.backward()
    assert model.mil.missing.grad is not None and model.mil.missing.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_attention_sums_to_one() -> None:
    model = _model().eval()
    with torch.no_grad():
        outputs = model([torch.randn(20, 8), torch.randn(3, 8)], torch.randn(2, 5))
    for weights in outputs["attention"]:
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
        assert torch.all(weights >= 0)


def test_single_bag_without_genomics() -> None:
    spec = TaskSpec(tasks=("survival",), n_bins=4)
    model = _model(n_genomic=0, spec=spec)
    assert model.snn is None
    outputs = model(torch.randn(5, 8))
    assert set(outputs) == {"survival", "attention", "embedding"}
    assert outputs["survival"].shape == (1, 4)
    outputs["survival"].sum().backward()


def test_missing_genomics_is_an_error_when_expected() -> None:
    with pytest.raises(ValueError, match="genomic"):
        _model()(torch.randn(5, 8))


def test_eval_mode_is_deterministic() -> None:
    model = _model().eval()
    bag, genomics = torch.randn(9, 8), torch.randn(5)
    with torch.no_grad():
        first = model(bag, genomics)["grade"]
        second = model(bag, genomics)["grade"]
    assert torch.equal(first, second)


def test_mil_rejects_wrong_feature_dimension() -> None:
    mil = GatedAttentionMIL(in_dim=8, hidden_dim=4)
    with pytest.raises(ValueError):
        mil(torch.randn(3, 7))


def test_snn_shape_and_lecun_init() -> None:
    torch.manual_seed(0)
    snn = SelfNormalizingNetwork(in_dim=400, hidden_dims=(300, 32), dropout=0.2)
    assert snn(torch.randn(4, 400)).shape == (4, 32)
    first = snn.network[0]
    assert isinstance(first, nn.Linear)
    assert float(first.weight.detach().std()) == pytest.approx(400**-0.5, rel=0.05)
    assert any(isinstance(layer, nn.AlphaDropout) for layer in snn.network)


def test_unknown_model_lists_known_models() -> None:
    with pytest.raises(ConfigError, match="mm_baseline"):
        build_model("nope", n_tiles_dim=8, n_genomic=0, task_spec=SPEC)


def test_planned_model_is_reported_as_not_implemented() -> None:
    if "ksf" in MODELS:
        pytest.skip("ksf is implemented")
    with pytest.raises(ConfigError, match="planned"):
        build_model("ksf", n_tiles_dim=8, n_genomic=0, task_spec=SPEC)


def test_register_model_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("mm_baseline")(lambda **_: nn.Identity())


def test_register_and_build_custom_model() -> None:
    name = "test_only_identity"

    @register_model(name)
    def build(**kwargs: object) -> nn.Module:
        return nn.Identity()

    try:
        assert isinstance(build_model(name, n_tiles_dim=4, n_genomic=0, task_spec=SPEC), nn.Identity)
    finally:
        MODELS.pop(name)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tasks": ()},
        {"tasks": ("stage",)},
        {"tasks": ("grade",), "n_classes": 1},
        {"tasks": ("grade", "grade"), "n_classes": 3},
    ],
)
def test_task_spec_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        TaskSpec(**kwargs)

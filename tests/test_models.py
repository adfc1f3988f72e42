from __future__ import annotations

import pytest
import torch
from torch import nn

from histofuse.errors import ConfigError
from histofuse.models import (
    MODELS,
    GatedAttentionMIL,
    IndependentTaskModels,
    InputDims,
    ModelInputs,
    MultimodalBaseline,
    MultimodalModel,
    SelfNormalizingNetwork,
    TaskSpec,
    build_model,
    register_model,
    registry,
)

SPEC = TaskSpec(tasks=("grade", "survival"), n_classes=3, n_bins=4)


def _model(n_genomic: int = 5, spec: TaskSpec = SPEC) -> nn.Module:
    torch.manual_seed(0)
    return build_model(
        "mm_baseline", InputDims(n_tiles_dim=8, n_genomic=n_genomic), task_spec=spec, hidden_dim=16, dropout=0.1
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


def test_snn_layer_widths_are_a_builder_option() -> None:
    dims = InputDims(n_tiles_dim=8, n_genomic=80)
    default = build_model("snn", dims, task_spec=SPEC, hidden_dim=64)
    narrow = build_model("snn", dims, task_spec=SPEC, hidden_dim=64, hidden_dims=[32, 32])
    widths = [m.out_features for m in narrow.snn.network if isinstance(m, nn.Linear)]
    assert widths == [32, 32] and default.snn.out_dim == 64
    out = narrow(None, genomics=torch.randn(5, 80))
    assert out["grade"].shape == (5, 3) and out["embedding"].shape == (5, 32)


def test_unknown_model_lists_known_models() -> None:
    with pytest.raises(ConfigError, match="mm_baseline"):
        build_model("nope", InputDims(n_tiles_dim=8), task_spec=SPEC)


def test_planned_model_is_reported_as_not_implemented(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "PLANNED_MODELS", ("future_model",))
    with pytest.raises(ConfigError, match="planned"):
        build_model("future_model", InputDims(n_tiles_dim=8), task_spec=SPEC)


def test_register_model_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("mm_baseline")(lambda **_: nn.Identity())


def test_register_and_build_custom_model() -> None:
    name = "test_only_identity"

    @register_model(name)
    def build(**kwargs: object) -> nn.Module:
        return nn.Identity()

    try:
        assert isinstance(build_model(name, InputDims(n_tiles_dim=4), task_spec=SPEC), nn.Identity)
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


# --- task specification ----------------------------------------------------------------------


def test_task_spec_outputs_per_task_and_loss() -> None:
    spec = TaskSpec(
        tasks=("grade", "diagnosis", "survival", "binary"), n_classes={"grade": 3, "diagnosis": 5}, n_bins=6
    )
    assert [spec.n_outputs(task) for task in spec.tasks] == [3, 5, 6, 1]
    assert [spec.loss_kind(task) for task in spec.tasks] == [
        "cross_entropy",
        "cross_entropy",
        "survival_nll",
        "bce",
    ]
    cox = TaskSpec(tasks=("survival",), survival_loss="cox")
    assert cox.n_outputs("survival") == 1 and cox.loss_kind("survival") == "cox"


def test_task_spec_integer_classes_apply_to_every_classification_task() -> None:
    spec = TaskSpec(tasks=("grade", "diagnosis"), n_classes=4)
    assert spec.n_outputs("grade") == spec.n_outputs("diagnosis") == 4


def test_task_spec_round_trips_through_a_plain_dict() -> None:
    spec = TaskSpec(
        tasks=("diagnosis", "survival"), n_classes={"diagnosis": 3}, n_bins=2, survival_loss="cox"
    )
    assert TaskSpec.from_dict(spec.to_dict()) == spec
    assert TaskSpec.from_dict({"tasks": ["grade"], "n_classes": 3, "n_bins": 4}) == TaskSpec(
        tasks=("grade",), n_classes=3
    )


def test_task_spec_only_keeps_one_task() -> None:
    spec = TaskSpec(tasks=("grade", "survival"), n_classes=3, n_bins=5)
    single = spec.only("survival")
    assert single.tasks == ("survival",) and single.n_outputs("survival") == 5
    with pytest.raises(KeyError):
        spec.only("binary")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tasks": ("diagnosis",)},
        {"tasks": ("grade", "diagnosis"), "n_classes": {"grade": 3}},
        {"tasks": ("grade",), "n_classes": {"grade": 3, "survival": 2}},
        {"tasks": ("survival",), "survival_loss": "weibull"},
        {"tasks": ("survival",), "n_bins": 0},
    ],
)
def test_task_spec_rejects_inconsistent_settings(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        TaskSpec(**kwargs)


# --- registry ------------------------------------------------------------------------------


def _capture_builder(name: str) -> dict:
    captured: dict = {}

    @register_model(name)
    def build(**kwargs: object) -> nn.Module:
        captured.update(kwargs)
        return nn.Identity()

    return captured


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_tiles_dim": 0}, "tile feature dimension"),
        ({"n_tiles_dim": 4, "n_genomic": -1}, "genomic features"),
        ({"n_tiles_dim": 4, "n_clinical": -1}, "clinical features"),
    ],
)
def test_input_dims_reject_negative_sizes(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        InputDims(**kwargs)


def test_input_dims_are_frozen_and_resolved() -> None:
    dims = InputDims(n_tiles_dim=4, n_genomic=2)
    assert dims.gene_groups == ((0, 1),) and dims.subspaces == {}
    with pytest.raises(AttributeError):
        dims.n_genomic = 3  # type: ignore[misc]


class _Recorder(MultimodalModel):
    """Reads slides, genomics and optional clinical data; records what it was given."""

    model_name = "recorder"
    reads_clinical = True

    def __init__(self) -> None:
        super().__init__()
        self.n_genomic, self.n_clinical = 2, 3
        self.weight = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.seen: list[ModelInputs] = []

    def compute(self, inputs: ModelInputs) -> dict:
        self.seen.append(inputs)
        return {}


def test_multimodal_model_checks_and_batches_its_inputs() -> None:
    model = _Recorder()
    bag, empty = torch.randn(4, 5), torch.zeros(0, 5)
    model([bag, empty], torch.ones(2, 2), torch.ones(2, 3), clinical_present=torch.tensor([True, False]))
    inputs = model.seen[-1]
    assert inputs.batch_size == 2 and [tuple(b.shape) for b in inputs.bags] == [(4, 5), (0, 5)]
    assert all(b.dtype == torch.float64 for b in inputs.bags) and inputs.genomics.dtype == torch.float64
    model(bag, torch.ones(2), None)
    assert model.seen[-1].batch_size == 1 and model.seen[-1].clinical is None
    with pytest.raises(ValueError, match="recorder needs at least one bag"):
        model([], torch.ones(2, 2))
    with pytest.raises(ValueError, match="recorder needs genomics with 2 features per patient"):
        model([bag])
    with pytest.raises(ValueError, match=r"clinical must be \(1, 3\)"):
        model([bag], torch.ones(2), torch.ones(1, 4))


def test_build_model_passes_resolved_groups_and_subspaces() -> None:
    name = "test_only_capture"
    captured = _capture_builder(name)
    try:
        build_model(name, InputDims(n_tiles_dim=4, n_genomic=3, n_clinical=2, gene_groups=[]), task_spec=SPEC)
        assert captured["dims"].gene_groups == ((0, 1, 2),)
        assert captured["dims"].subspaces == {}
        assert captured["dims"].n_clinical == 2
        dims = InputDims(n_tiles_dim=4, n_genomic=3, gene_groups=[[2], [0, 1]], subspaces={"tumour": [0]})
        build_model(name, dims, task_spec=SPEC)
        assert captured["dims"].gene_groups == ((2,), (0, 1))
        assert captured["dims"].subspaces == {"tumour": (0,)}
    finally:
        MODELS.pop(name)


@pytest.mark.parametrize(
    ("gene_groups", "subspaces", "match"),
    [
        ([[0, 5]], None, "gene group 0"),
        ([[0], []], None, "gene group 1"),
        ([[1, 1]], None, "twice"),
        (None, {"tumour": [7]}, "subspace 'tumour'"),
    ],
)
def test_input_dims_reject_bad_gene_indices(
    gene_groups: list | None, subspaces: dict | None, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        InputDims(n_tiles_dim=4, n_genomic=3, gene_groups=gene_groups or (), subspaces=subspaces or {})


def test_build_model_rejects_an_option_the_model_does_not_have() -> None:
    with pytest.raises(ConfigError, match="no option.*joint.*n_heads"):
        build_model(
            "ksf",
            InputDims(n_tiles_dim=8, n_genomic=4, subspaces={"tumour": [0], "microenvironment": [1]}),
            task_spec=SPEC,
            hidden_dim=16,
            joint=False,
        )


# --- every model, every task ------------------------------------------------------------------

N_TILES_DIM, N_GENOMIC, N_CLINICAL = 6, 6, 3
GROUPS = [[0, 1, 2], [3, 4], [5]]
SUBSPACES = {"tumour": [0, 1, 2], "microenvironment": [3, 4, 5]}
SPECS = {
    "grade+nll": TaskSpec(tasks=("grade", "survival"), n_classes=3, n_bins=4),
    "diagnosis+binary": TaskSpec(tasks=("diagnosis", "binary"), n_classes={"diagnosis": 4}),
    "cox": TaskSpec(tasks=("survival",), survival_loss="cox"),
}
SLIDE_FREE = {"snn", "clinical"}


def _build(name: str, spec: TaskSpec, **options: object) -> nn.Module:
    torch.manual_seed(0)
    return build_model(
        name,
        InputDims(
            n_tiles_dim=N_TILES_DIM,
            n_genomic=N_GENOMIC,
            n_clinical=N_CLINICAL,
            gene_groups=GROUPS,
            subspaces=SUBSPACES,
        ),
        task_spec=spec,
        hidden_dim=16,
        dropout=0.1,
        **options,
    )


def _inputs() -> dict:
    generator = torch.Generator().manual_seed(1)
    sizes = [5, 0, 1, 9]
    coords = []
    for size in sizes:
        cells = torch.randperm(16, generator=generator)[:size]
        coords.append(torch.stack([cells % 4, cells // 4], dim=1) * 256 + 1024)
    return {
        "bags": [torch.randn(size, N_TILES_DIM, generator=generator) for size in sizes],
        "genomics": torch.randn(len(sizes), N_GENOMIC, generator=generator),
        "clinical": torch.randn(len(sizes), N_CLINICAL, generator=generator),
        "coords": coords,
    }


@pytest.mark.parametrize("spec_name", sorted(SPECS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_gives_the_contract_outputs(name: str, spec_name: str) -> None:
    spec = SPECS[spec_name]
    model = _build(name, spec)
    inputs = _inputs()
    outputs = model(inputs["bags"], inputs["genomics"], inputs["clinical"], inputs["coords"])
    batch = len(inputs["bags"])
    for task in spec.tasks:
        assert outputs[task].shape == (batch, spec.n_outputs(task))
        assert torch.isfinite(outputs[task]).all()
    assert outputs["embedding"].shape[0] == batch
    expected_attention = [0] * batch if name in SLIDE_FREE else [bag.shape[0] for bag in inputs["bags"]]
    assert [weights.shape[0] for weights in outputs["attention"]] == expected_attention
    aux = outputs.get("aux_losses", {})
    for value in aux.values():
        assert value.ndim == 0 and torch.isfinite(value)
    total = sum(outputs[task].sum() for task in spec.tasks) + sum(aux.values())
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", ["snn", "clinical"])
@pytest.mark.parametrize("bags", [None, []])
def test_slide_free_models_work_without_bags(name: str, bags: list | None) -> None:
    model = _build(name, SPEC).eval()
    inputs = _inputs()
    with torch.no_grad():
        outputs = model(bags, inputs["genomics"], inputs["clinical"])
        with_bags = model(inputs["bags"], inputs["genomics"], inputs["clinical"])
    assert outputs["grade"].shape == (4, 3)
    assert torch.equal(outputs["grade"], with_bags["grade"])


def test_mm_baseline_ignores_clinical_and_coordinates() -> None:
    model = _build("mm_baseline", SPEC).eval()
    inputs = _inputs()
    with torch.no_grad():
        plain = model(inputs["bags"], inputs["genomics"])
        extra = model(
            inputs["bags"],
            inputs["genomics"],
            inputs["clinical"],
            inputs["coords"],
            clinical_present=torch.tensor([True, False, True, False]),
        )
    assert torch.equal(plain["survival"], extra["survival"])


@pytest.mark.parametrize(
    ("name", "n_genomic", "n_clinical", "subspaces", "match"),
    [
        ("snn", 0, 3, None, "genomic"),
        ("concat", 0, 3, None, "genomic"),
        ("kronecker", 0, 3, None, "genomic"),
        ("m2f", 0, 3, None, "genomic"),
        ("clinical", 6, 0, None, "clinical"),
        ("bidistill", 6, 0, None, "clinical"),
        ("mm_impute", 6, 0, None, "clinical"),
        ("ksf", 6, 3, {"tumour": [0, 1]}, "microenvironment"),
    ],
)
def test_models_refuse_missing_modalities(
    name: str, n_genomic: int, n_clinical: int, subspaces: dict | None, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(
            name,
            InputDims(n_tiles_dim=8, n_genomic=n_genomic, n_clinical=n_clinical, subspaces=subspaces or {}),
            task_spec=SPEC,
            hidden_dim=16,
        )


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("m2f", {"n_heads": 3}),
        ("ksf", {"n_heads": 5}),
        ("m2f", {"n_layers": 0}),
        ("m2f", {"coattn_heads": 3}),
        ("m2f", {"rho": "yes"}),
        ("ksf", {"grid": "square"}),
        ("ksf", {"n_heads": 6, "offset_groups": 4}),
        ("ksf", {"offset_groups": 3}),
        ("m2f", {"joint": "yes"}),
        ("bidistill", {"temperature": 0}),
        ("bidistill", {"logit_weight": -1.0}),
        ("bidistill", {"slide_feature_weight": True}),
        ("bidistill", {"directions": "both"}),
        ("kronecker", {"fusion_dim": 0}),
    ],
)
def test_invalid_model_options_are_config_errors(name: str, options: dict) -> None:
    with pytest.raises(ConfigError):
        _build(name, SPEC, **options)


def test_ksf_defaults_to_the_authors_pseudo_grid_without_coordinates() -> None:
    model = _build("ksf", SPEC)
    assert model.options.grid == "pseudo" and model.options.pseudo_side == 50
    inputs = _inputs()
    outputs = model(inputs["bags"], inputs["genomics"])
    assert torch.isfinite(outputs["grade"]).all()


def test_ksf_on_the_real_grid_needs_coordinates() -> None:
    model = _build("ksf", SPEC, grid="real")
    inputs = _inputs()
    with pytest.raises(ValueError, match="coordinates"):
        model(inputs["bags"], inputs["genomics"])


def test_independent_copies_merge_outputs() -> None:
    model = _build("m2f", SPEC, joint=False)
    assert isinstance(model, IndependentTaskModels)
    inputs = _inputs()
    outputs = model(inputs["bags"], inputs["genomics"])
    assert outputs["grade"].shape == (4, 3) and outputs["survival"].shape == (4, 4)
    assert outputs["embedding"].shape == (4, 32)
    for weights, bag in zip(outputs["attention"], inputs["bags"], strict=True):
        assert weights.shape == (bag.shape[0],)
        if bag.shape[0]:
            assert float(weights.detach().sum()) == pytest.approx(1.0, abs=1e-5)

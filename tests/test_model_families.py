from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from histofuse.losses import cox_partial_nll, masked_bce, masked_cross_entropy, risk_from_logits, survival_nll
from histofuse.metrics import cindex
from histofuse.models import InputDims, TaskSpec, build_model
from histofuse.models.deformable_attention import DeformableCrossAttention, sampling_positions
from histofuse.models.kronecker import kronecker_with_ones
from histofuse.models.tile_grid import bilinear_tile_weights, pseudo_grid, sample_grid, tile_grid

N_TILES_DIM, N_GENOMIC, N_CLINICAL = 6, 6, 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models train faster on one thread than on threads competing for shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


SUBSPACES = {"tumour": [0, 1, 2], "microenvironment": [3, 4, 5]}
GROUPS = [[0, 1, 2], [3, 4, 5]]


def _cohort(n_patients: int = 16, seed: int = 0) -> dict:
    """Patients whose label (0 / 1) shifts some tiles, two genes and one clinical value."""
    generator = torch.Generator().manual_seed(seed)
    label = torch.arange(n_patients) % 2
    bags, coords = [], []
    for index in range(n_patients):
        size = 4 + index % 5
        bag = torch.randn(size, N_TILES_DIM, generator=generator) * 0.5
        bag[: size // 2, 0] += 2.0 * (2 * float(label[index]) - 1)
        bags.append(bag)
        cells = torch.randperm(25, generator=generator)[:size]
        coords.append(torch.stack([cells % 5, cells // 5], dim=1) * 224 + 448 * index)
    signal = (2 * label.float() - 1).unsqueeze(1)
    genomics = torch.randn(n_patients, N_GENOMIC, generator=generator) * 0.5
    genomics[:, [0, 3]] += 1.5 * signal
    clinical = torch.randn(n_patients, N_CLINICAL, generator=generator) * 0.5
    clinical[:, :1] += 1.5 * signal
    return {"bags": bags, "coords": coords, "genomics": genomics, "clinical": clinical, "label": label}


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


def _run(model: nn.Module, cohort: dict) -> dict:
    return model(cohort["bags"], cohort["genomics"], cohort["clinical"], cohort["coords"])


def _aux(outputs: dict) -> Tensor:
    return sum(outputs.get("aux_losses", {}).values(), start=torch.zeros(()))


def _fit(
    model: nn.Module, loss_of: Callable[[dict], Tensor], cohort: dict, steps: int = 30
) -> tuple[float, float]:
    """Full-batch Adam; returns the training loss before and after (eval mode)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            value = float(loss_of(_run(model, cohort)))
        model.train()
        return value

    before = evaluate()
    for _ in range(steps):
        optimiser.zero_grad()
        outputs = _run(model, cohort)
        (loss_of(outputs) + 0.1 * _aux(outputs)).backward()
        optimiser.step()
    return before, evaluate()


GRADE = TaskSpec(tasks=("grade",), n_classes=2)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("abmil", {}),
        ("snn", {}),
        ("clinical", {}),
        ("concat", {}),
        ("mm_baseline", {}),
        ("kronecker", {}),
        ("m2f", {}),
        ("m2f", {"joint": False}),
        ("ksf", {"n_heads": 2, "offset_groups": 2, "head_dim": 8, "grid": "real"}),
        ("ksf", {"n_heads": 2, "offset_groups": 2, "head_dim": 8, "grid": "pseudo", "pseudo_side": 4}),
        ("bidistill", {}),
        ("mm_impute", {}),
    ],
)
def test_model_learns_a_planted_signal(name: str, options: dict) -> None:
    cohort = _cohort()
    model = _build(name, GRADE, **options)
    before, after = _fit(model, lambda out: masked_cross_entropy(out["grade"], cohort["label"]), cohort)
    assert after < 0.5 * before
    model.eval()
    with torch.no_grad():
        predicted = _run(model, cohort)["grade"].argmax(dim=1)
    assert float((predicted == cohort["label"]).float().mean()) >= 0.9


@pytest.mark.parametrize(("name", "survival_loss"), [("abmil", "cox"), ("m2f", "nll")])
def test_survival_training_orders_patients(name: str, survival_loss: str) -> None:
    cohort = _cohort(seed=1)
    label = cohort["label"].float()
    time = 1.0 + 3.0 * (1 - label) + torch.arange(len(label)) * 0.01  # label 1 dies early
    event = torch.ones_like(time)
    spec = TaskSpec(tasks=("survival", "binary"), n_bins=3, survival_loss=survival_loss)
    model = _build(name, spec)
    bins = (time > 2).long() + (time > 4).long()

    def loss_of(out: dict) -> Tensor:
        if survival_loss == "cox":
            survival = cox_partial_nll(out["survival"], time, event)
        else:
            survival = survival_nll(out["survival"], bins, 1 - event)
        return survival + masked_bce(out["binary"], label)

    before, after = _fit(model, loss_of, cohort)
    assert after < before
    model.eval()
    with torch.no_grad():
        logits = _run(model, cohort)["survival"]
    risk = logits[:, 0] if survival_loss == "cox" else risk_from_logits(logits)
    assert cindex(time.numpy(), risk.numpy(), event.numpy()) > 0.8


# --- M2F: joint or one copy per task ------------------------------------------------------------


def test_m2f_separate_tasks_share_no_parameter() -> None:
    spec = TaskSpec(tasks=("grade", "survival"), n_classes=2, n_bins=3)
    cohort = _cohort(n_patients=4)
    model = _build("m2f", spec, joint=False)
    grade_loss = masked_cross_entropy(_run(model, cohort)["grade"], cohort["label"])
    grade_loss.backward()
    grade_grads = [p.grad for p in model.models["grade"].parameters()]
    survival_grads = [p.grad for p in model.models["survival"].parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grade_grads)
    assert all(g is None or torch.all(g == 0) for g in survival_grads)
    shared = {id(p) for p in model.models["grade"].parameters()} & {
        id(p) for p in model.models["survival"].parameters()
    }
    assert not shared


def test_m2f_joint_tasks_share_the_encoders() -> None:
    spec = TaskSpec(tasks=("grade", "survival"), n_classes=2, n_bins=3)
    cohort = _cohort(n_patients=4)
    model = _build("m2f", spec, joint=True)
    survival_loss = _run(model, cohort)["survival"].sum()
    survival_loss.backward()
    assert model.tile_encoder[0].weight.grad.abs().sum() > 0
    assert model.heads.heads["grade"].weight.grad is None


def _outputs(model: nn.Module, cohort: dict) -> Tensor:
    model.eval()
    with torch.no_grad():
        return _run(model, cohort)["grade"]


def test_m2f_transformer_layers_and_heads() -> None:
    model = _build("m2f", GRADE, n_layers=3, n_heads=8)
    for encoder in (model.wsi_encoder, model.genomic_encoder):
        assert len(encoder.layers) == 3
        assert all(layer.self_attn.num_heads == 8 for layer in encoder.layers)
    assert model.co_attention.num_heads == 8  # coattn_heads null: the transformer's heads
    default = _build("m2f", GRADE)
    assert len(default.wsi_encoder.layers) == 1 and default.wsi_encoder.layers[0].self_attn.num_heads == 4


def test_m2f_coattention_heads_split_the_same_weights_differently() -> None:
    cohort = _cohort(n_patients=4)
    four, one = _build("m2f", GRADE), _build("m2f", GRADE, coattn_heads=1)
    assert one.co_attention.num_heads == 1 and one.wsi_encoder.layers[0].self_attn.num_heads == 4
    for (name, a), b in zip(four.state_dict().items(), one.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # the same seed gives the same weights ...
    assert not torch.allclose(_outputs(four, cohort), _outputs(one, cohort))  # ... one head attends otherwise
    for weights in one(cohort["bags"], cohort["genomics"])["attention"]:
        assert torch.allclose(weights.sum(), torch.tensor(1.0))


def test_m2f_rho_adds_a_layer_after_each_pooling() -> None:
    cohort = _cohort(n_patients=4)
    plain, with_rho = _build("m2f", GRADE), _build("m2f", GRADE, rho=True)
    n_plain = sum(p.numel() for p in plain.parameters())
    n_rho = sum(p.numel() for p in with_rho.parameters())
    assert n_rho - n_plain == 2 * (16 * 16 + 16)
    assert isinstance(plain.wsi_rho, nn.Identity)
    assert [type(layer) for layer in with_rho.wsi_rho] == [nn.Linear, nn.ReLU, nn.Dropout]
    # the rho layers take part: zeroing them zeroes both modalities' pooled vectors
    with torch.no_grad():
        for layer in (with_rho.wsi_rho[0], with_rho.genomic_rho[0]):
            layer.weight.zero_()
            layer.bias.zero_()
    constant = _outputs(with_rho, cohort)
    assert torch.allclose(constant, constant[:1].expand_as(constant))
    assert not torch.allclose(_outputs(plain, cohort), _outputs(plain, cohort)[:1].expand(4, -1))


def test_mcat_preset_builds_mcats_coattention() -> None:
    import yaml

    from histofuse.training.settings import TrainSettings, model_training_section

    root = Path(__file__).resolve().parents[1]
    base = yaml.safe_load((root / "config" / "config.yaml").read_text())["training"]
    preset = yaml.safe_load((root / "config" / "examples" / "m2f_mcat.yaml").read_text())["training"]
    section = {**base, **preset, "models": ["m2f", "m2f_separate"]}
    settings = TrainSettings.from_mapping(model_training_section(section, "m2f"))
    assert settings.alpha_surv == 0.0 and settings.hidden_dim == 256 and settings.grad_accum == 32
    for name in ("m2f", "m2f_separate"):
        model = build_model(
            name, InputDims(n_tiles_dim=N_TILES_DIM, n_genomic=N_GENOMIC, gene_groups=GROUPS), task_spec=GRADE,
            hidden_dim=settings.hidden_dim, dropout=settings.dropout, **settings.options_for(name),
        )
        copy = model if name == "m2f" else model.models["grade"]
        assert copy.co_attention.num_heads == 1 and len(copy.wsi_encoder.layers) == 2
        assert copy.wsi_encoder.layers[0].self_attn.num_heads == 8
        assert copy.wsi_encoder.layers[0].linear1.out_features == 2 * settings.hidden_dim
        assert isinstance(copy.genomic_rho[0], nn.Linear)


# --- KSF: the tile grid ------------------------------------------------------------------------

STEP, ORIGIN = 224, (1000, 3000)
# An L: a column of three tiles and a foot of two more tiles to the right of the bottom one.
L_CELLS = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2)]  # (col, row)
HOLES = [(1, 0), (2, 0), (1, 1), (2, 1)]


def _l_layout(order: list[int] | None = None) -> tuple[Tensor, Tensor]:
    cells = [L_CELLS[i] for i in (order or range(len(L_CELLS)))]
    coords = torch.tensor([[ORIGIN[0] + col * STEP, ORIGIN[1] + row * STEP] for col, row in cells])
    features = torch.stack(
        [torch.arange(4, dtype=torch.float64) + 10 * (col + 3 * row + 1) for col, row in cells]
    )
    return coords, features


@pytest.mark.parametrize("order", [None, [4, 2, 0, 3, 1]])
def test_tile_grid_is_rebuilt_from_coordinates(order: list[int] | None) -> None:
    coords, _ = _l_layout(order)
    grid = tile_grid(coords)
    assert (grid.height, grid.width, grid.step, grid.origin) == (3, 3, STEP, ORIGIN)
    cells = [L_CELLS[i] for i in (order or range(len(L_CELLS)))]
    assert grid.cols.tolist() == [col for col, _ in cells]
    assert grid.rows.tolist() == [row for _, row in cells]


@pytest.mark.parametrize("order", [None, [3, 1, 4, 0, 2]])
def test_sampling_at_a_tile_returns_its_feature_and_holes_give_zeros(order: list[int] | None) -> None:
    coords, features = _l_layout(order)
    grid = tile_grid(coords)
    feature_map = grid.scatter(features).unsqueeze(0)  # (1, C, 3, 3)
    tile_points = grid.to_normalised(grid.rows, grid.cols, dtype=torch.float64).unsqueeze(0)
    sampled = sample_grid(feature_map, tile_points)[0]
    assert torch.allclose(sampled, features, rtol=0, atol=1e-12)
    holes = torch.tensor(HOLES)
    hole_points = grid.to_normalised(holes[:, 1], holes[:, 0], dtype=torch.float64).unsqueeze(0)
    assert torch.all(sample_grid(feature_map, hole_points) == 0)
    # half way between the top two tiles of the column: their mean
    between = grid.to_normalised(torch.tensor([0.5]), torch.tensor([0.0]), dtype=torch.float64).unsqueeze(0)
    position = order or list(range(len(L_CELLS)))
    top, below = features[position.index(0)], features[position.index(1)]
    assert torch.allclose(sample_grid(feature_map, between)[0, 0], (top + below) / 2)


def test_bilinear_tile_weights_match_grid_sample() -> None:
    coords, features = _l_layout()
    grid = tile_grid(coords)
    points = torch.tensor([[-0.9, 0.8], [0.3, 1.0], [0.0, 0.0], [-1.0, -0.2]], dtype=torch.float64)
    sampled = sample_grid(grid.scatter(features).unsqueeze(0), points.unsqueeze(0))[0]
    weights = bilinear_tile_weights(grid, points)
    assert weights.shape == (len(L_CELLS), 4)
    assert torch.allclose(weights.t() @ features, sampled)


def test_tile_grid_rejects_bad_layouts() -> None:
    with pytest.raises(ValueError, match="share one grid cell"):
        tile_grid(torch.tensor([[0, 0], [224, 0], [0, 0]]))
    with pytest.raises(ValueError, match="regular grid"):
        tile_grid(torch.tensor([[0, 0], [1001, 0], [0, 997]]), max_cells=10_000)
    with pytest.raises(ValueError, match="N >= 1"):
        tile_grid(torch.zeros(0, 2, dtype=torch.long))


def test_single_tile_grid() -> None:
    grid = tile_grid(torch.tensor([[512, 768]]))
    assert (grid.height, grid.width, grid.step) == (1, 1, 1)


def test_sampling_positions_by_hand() -> None:
    # stride 2: key (0, 0) covers cells 0-1, centre 0.5; key (0, 1) covers cells 2-3, centre 2.5.
    # offset_scale 1: an offset o moves a key by o · 1 · 2 cells.
    offsets = torch.tensor([[[[0.0, 0.5]], [[0.0, -0.25]]]])  # (1 group, x / y, 1 x 2 keys)
    cells = sampling_positions(offsets, stride=2, offset_scale=1.0)
    assert cells.shape == (1, 1, 2, 2)
    assert cells[0, 0].tolist() == [[0.5, 0.5], [3.5, 0.0]]
    # on a 3 x 4 grid (rows x cols): x -> x · 2/3 - 1, y -> y · 2/2 - 1
    every_cell = torch.tensor([[col * STEP, row * STEP] for row in range(3) for col in range(4)])
    grid = tile_grid(every_cell)
    normalised = grid.to_normalised(cells[..., 1], cells[..., 0], dtype=torch.float64)
    assert normalised[0, 0].flatten().tolist() == pytest.approx([-2 / 3, -0.5, 4 / 3, -1.0])


def test_deformable_attention_reads_block_centres_without_offsets() -> None:
    coords, features = _l_layout()
    grid = tile_grid(coords)  # 3 x 3 with holes
    torch.manual_seed(0)
    layer = DeformableCrossAttention(
        dim=4, n_heads=2, head_dim=2, n_groups=2, downsample=2, offset_scale=4.0, dropout=0.0
    ).double()
    nn.init.zeros_(layer.offsets[2].weight)  # tanh(0) = 0: every key at its block centre
    read = layer(features, features, grid)
    # key grid 2 x 2; block centres 0.5 and 2.5 cells, normalised on 3 cells: x - 1
    centres = [-0.5, -0.5, 1.5, -0.5, -0.5, 1.5, 1.5, 1.5]
    assert read.key_shape == (2, 2)
    for group in read.positions:
        assert group.flatten().tolist() == pytest.approx(centres)
    assert read.output.shape == (5, 4)
    shares = read.token_attention(grid)
    assert shares.shape == (5,) and float(shares.sum()) == pytest.approx(1.0)
    # with learned offsets the positions move, by at most offset_scale key cells
    nn.init.normal_(layer.offsets[2].weight)
    moved = layer(features, features, grid).positions
    assert not torch.allclose(moved, read.positions)
    # at most offset_scale · stride = 8 cells, i.e. 8 in normalised units on 3 cells (2 / (3 - 1) = 1)
    assert torch.all((moved - read.positions).abs() <= 8.0 + 1e-9)


def test_pseudo_grid_packs_the_tiles_like_the_authors() -> None:
    grid, tiles = pseudo_grid(3, 2)
    assert (grid.height, grid.width) == (2, 2)
    assert grid.rows.tolist() == [0, 0, 1, 1] and grid.cols.tolist() == [0, 1, 0, 1]
    assert tiles.tolist() == [0, 1, 2, 0]  # repeated cyclically
    # more tiles than slots: round(k · 10 / 4) = round(0, 2.5, 5, 7.5), halves to even
    assert pseudo_grid(10, 2)[1].tolist() == [0, 2, 5, 8]


def test_ksf_depends_on_the_layout_not_its_position_or_scale() -> None:
    cohort = _cohort(n_patients=3)
    model = _build("ksf", GRADE, n_heads=2, offset_groups=2, head_dim=8, grid="real").eval()
    with torch.no_grad():
        base = _run(model, cohort)
        moved = model(
            cohort["bags"],
            cohort["genomics"],
            coords=[(xy - xy.min(0).values) * 2 + 777 for xy in cohort["coords"]],
        )
        shuffled_layout = model(
            cohort["bags"], cohort["genomics"], coords=[xy.flip(0) for xy in cohort["coords"]]
        )
    assert torch.allclose(base["grade"], moved["grade"], atol=1e-6)
    assert not torch.allclose(base["grade"], shuffled_layout["grade"], atol=1e-6)


def test_ksf_outputs_branches_and_consistency() -> None:
    cohort = _cohort(n_patients=5)
    model = _build("ksf", GRADE, n_heads=2, offset_groups=2, head_dim=8, grid="real")
    outputs = _run(model, cohort)
    assert set(outputs["branches"]) == {"tumour", "microenvironment"}
    assert all(value.shape == (5, 16) for value in outputs["branches"].values())
    assert all(logits["grade"].shape == (5, 2) for logits in outputs["branch_logits"].values())
    consistency = outputs["aux_losses"]["consistency"]
    assert float(consistency.detach()) > 0
    consistency.backward()
    for branch in model.branches.values():
        # the gene embeddings are learned through the consistency loss, and so are the offsets
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.gene_encoder.parameters())
        assert branch.attention.offsets[2].weight.grad.abs().sum() > 0
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.heads.parameters())


def test_ksf_branches_have_their_own_encoders() -> None:
    model = _build("ksf", GRADE, n_heads=2, offset_groups=2, head_dim=8)
    tumour, micro = model.branches["tumour"], model.branches["microenvironment"]
    assert tumour.tile_encoder[0].weight is not micro.tile_encoder[0].weight
    assert tumour.attention is not micro.attention
    assert not torch.equal(tumour.tile_encoder[0].weight, micro.tile_encoder[0].weight)


def test_ksf_pseudo_grid_ignores_coordinates() -> None:
    cohort = _cohort(n_patients=3)
    model = _build("ksf", GRADE, n_heads=2, offset_groups=2, head_dim=8, grid="pseudo", pseudo_side=4).eval()
    with torch.no_grad():
        with_coords = _run(model, cohort)
        without = model(cohort["bags"], cohort["genomics"])
    assert torch.allclose(with_coords["grade"], without["grade"])
    assert not model.needs_coords


# --- bidirectional distillation ------------------------------------------------------------------


def test_bidistill_routes_patients_without_clinical_data_through_the_slide_branch() -> None:
    cohort = _cohort(n_patients=6)
    model = _build("bidistill", GRADE).eval()
    present = torch.tensor([True, False, True, False, False, True])
    changed = cohort["clinical"].clone()
    changed[:] = torch.randn(changed.shape, generator=torch.Generator().manual_seed(9)) * 5
    with torch.no_grad():
        first = model(cohort["bags"], clinical=cohort["clinical"], clinical_present=present)
        second = model(cohort["bags"], clinical=changed, clinical_present=present)
        nothing = model(cohort["bags"])
    assert torch.equal(first["grade"][~present], second["grade"][~present])
    assert not torch.allclose(first["grade"][present], second["grade"][present])
    assert torch.equal(first["grade"][~present], first["branch_logits"]["slide_only"]["grade"][~present])
    assert torch.equal(first["grade"][present], first["branch_logits"]["multimodal"]["grade"][present])
    assert torch.equal(nothing["grade"], nothing["branch_logits"]["slide_only"]["grade"])


def test_bidistill_distillation_terms_leave_their_teachers_alone() -> None:
    cohort = _cohort(n_patients=6)
    model = _build("bidistill", GRADE)
    aux = _run(model, cohort)["aux_losses"]
    assert set(aux) == {"distill_single_from_multi", "distill_multi_from_single"}
    aux["distill_single_from_multi"].backward(retain_graph=True)
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.multimodal.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.slide_only.parameters())
    model.zero_grad(set_to_none=True)
    aux["distill_multi_from_single"].backward()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.slide_only.parameters())
    assert model.multimodal.mil.project[0].weight.grad.abs().sum() > 0


def test_bidistill_slide_branch_learns_from_the_teacher_alone() -> None:
    """With every clinical value present, only distillation trains the slide-only branch."""
    cohort = _cohort()
    model = _build("bidistill", GRADE)
    _fit(model, lambda out: masked_cross_entropy(out["grade"], cohort["label"]), cohort, steps=40)
    model.eval()
    with torch.no_grad():
        slide_only = model(cohort["bags"])["grade"]
    assert float((slide_only.argmax(1) == cohort["label"]).float().mean()) >= 0.8


def test_bidistill_distills_only_between_patients_with_both_modalities() -> None:
    """A batch with two patients lacking clinical data distils exactly as the two others alone."""
    cohort = _cohort(n_patients=4)
    present = torch.tensor([True, False, True, False])
    model = _build("bidistill", GRADE).eval()
    with torch.no_grad():
        mixed = model(cohort["bags"], clinical=cohort["clinical"], clinical_present=present)
        both = model(
            [bag for bag, keep in zip(cohort["bags"], present, strict=True) if keep],
            clinical=cohort["clinical"][present],
        )
        other_bags = [bag if keep else bag * 3 + 1 for bag, keep in zip(cohort["bags"], present, strict=True)]
        changed = model(other_bags, clinical=cohort["clinical"], clinical_present=present)
    for name in ("distill_single_from_multi", "distill_multi_from_single"):
        assert float(mixed["aux_losses"][name]) > 0
        torch.testing.assert_close(mixed["aux_losses"][name], both["aux_losses"][name])
        torch.testing.assert_close(mixed["aux_losses"][name], changed["aux_losses"][name])
    # the missing patients' outputs are the slides-only branch's, and follow their slides
    assert torch.equal(mixed["grade"][~present], mixed["branch_logits"]["slide_only"]["grade"][~present])
    assert not torch.allclose(mixed["grade"][~present], changed["grade"][~present])
    with torch.no_grad():
        nobody = model(cohort["bags"], clinical=cohort["clinical"], clinical_present=torch.zeros(4, dtype=torch.bool))
    assert all(float(value) == 0 for value in nobody["aux_losses"].values())


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, {"distill_single_from_multi", "distill_multi_from_single"}),
        ({"slide_feature_weight": 0.0}, {"distill_single_from_multi"}),
        ({"logit_weight": 0.0, "feature_weight": 0.0}, {"distill_multi_from_single"}),
    ],
)
def test_bidistill_direction_weights(options: dict, expected: set) -> None:
    cohort = _cohort(n_patients=4)
    base = _build("bidistill", GRADE).eval()
    model = _build("bidistill", GRADE, **options).eval()
    with torch.no_grad():
        reference = _run(base, cohort)["aux_losses"]
        aux = _run(model, cohort)["aux_losses"]
    assert set(aux) == expected
    for name in expected:  # same weights (same seed), the defaults' terms where a weight is 1
        torch.testing.assert_close(aux[name], reference[name])


def test_bidistill_term_weights_scale_their_terms() -> None:
    cohort = _cohort(n_patients=4)
    terms = {}
    for name, options in {
        "logits": {"feature_weight": 0.0},
        "features": {"logit_weight": 0.0},
        "doubled": {"logit_weight": 2.0, "feature_weight": 2.0, "slide_feature_weight": 3.0},
        "default": {},
        "hot": {"temperature": 4.0, "feature_weight": 0.0},
    }.items():
        with torch.no_grad():
            terms[name] = _run(_build("bidistill", GRADE, **options).eval(), cohort)["aux_losses"]
    single = "distill_single_from_multi"
    torch.testing.assert_close(terms["logits"][single] + terms["features"][single], terms["default"][single])
    torch.testing.assert_close(terms["doubled"][single], 2 * terms["default"][single])
    torch.testing.assert_close(
        terms["doubled"]["distill_multi_from_single"], 3 * terms["default"]["distill_multi_from_single"]
    )
    assert not torch.allclose(terms["hot"][single], terms["logits"][single])


def test_mm_impute_ignores_missing_values_but_sees_the_indicator() -> None:
    cohort = _cohort(n_patients=4)
    model = _build("mm_impute", GRADE).eval()
    missing = torch.tensor([False, True, False, True])
    changed = cohort["clinical"] + 3.0
    zeros = torch.zeros_like(cohort["clinical"])
    with torch.no_grad():
        first = model(cohort["bags"], clinical=cohort["clinical"], clinical_present=~missing)["grade"]
        second = model(cohort["bags"], clinical=changed, clinical_present=~missing)["grade"]
        as_missing = model(cohort["bags"], clinical=zeros, clinical_present=torch.zeros(4, dtype=torch.bool))[
            "grade"
        ]
        as_zero = model(cohort["bags"], clinical=zeros)["grade"]
    assert torch.equal(first[missing], second[missing])
    assert not torch.allclose(first[~missing], second[~missing])
    assert not torch.allclose(as_missing, as_zero)


# --- Kronecker fusion ----------------------------------------------------------------------------


def test_kronecker_product_keeps_unimodal_terms() -> None:
    first, second = torch.tensor([[2.0, 3.0]]), torch.tensor([[5.0, 7.0, 11.0]])
    product = kronecker_with_ones(first, second).view(3, 4)
    assert torch.equal(product[:2, :3], first.t() @ second)
    assert torch.equal(product[:2, 3], first[0])
    assert torch.equal(product[2, :3], second[0])
    assert product[2, 3] == 1


def test_cross_entropy_helper_is_plain_cross_entropy() -> None:
    logits = torch.randn(3, 2)
    target = torch.tensor([0, 1, 1])
    assert torch.allclose(masked_cross_entropy(logits, target), F.cross_entropy(logits, target))

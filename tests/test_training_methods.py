"""The training engine driving M2F, KSF, bidirectional distillation and their comparators.

A small cohort with tile grids (real coordinates), gene groups, clinical data and every label kind
(grade, diagnosis, binary, survival) is written to disk once; each test trains a few epochs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from histofuse.errors import ConfigError
from histofuse.evaluate import evaluate_predictions
from histofuse.metrics import multiclass_auc
from histofuse.models.registry import InputDims, TaskSpec, build_model
from histofuse.training import TrainSettings, load_fold_data, load_trained_model, predict_fold, train_fold
from histofuse.training.bags import open_bag_store
from histofuse.training.missing_rate import aggregate_missing_rates, missing_rate_fold, withheld
from histofuse.training.objective import Objective
from histofuse.training.trainer import _learning_rate, _Run

TILE_DIM = 12
STEP = 224
GROUPS = {"tumor_suppressor": ["TP53", "PTEN"], "oncogene": ["EGFR", "MYC"], "immune": ["CD8A", "PDCD1"], "stroma": ["FAP", "ACTA2"]}
SUBSPACES = {"tumour": ["tumor_suppressor", "oncogene"], "microenvironment": ["immune", "stroma"]}

FAST = TrainSettings(
    epochs=2,
    lr=3e-3,
    patience=0,
    hidden_dim=16,
    dropout=0.1,
    max_tiles=24,
    grad_accum=8,
    batch_size=4,
    seed=0,
    device="cpu",
    subspaces=SUBSPACES,
    model_options={"ksf": {"n_heads": 2, "offset_groups": 2, "head_dim": 8}, "m2f": {"n_heads": 2}, "m2f_separate": {"n_heads": 2}},
)


def _write_h5(path: Path, features: np.ndarray, coords: np.ndarray) -> None:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=features.astype(np.float32))
        handle.create_dataset("coords", data=coords.astype(np.int64))
        handle.attrs["encoder"] = "toy"


def _make_cohort(root: Path) -> dict[str, Path]:
    rng = np.random.default_rng(7)
    features_dir, tables_dir = root / "features", root / "tables"
    features_dir.mkdir(parents=True)
    tables_dir.mkdir(parents=True)
    n = 36
    grades = np.arange(n) % 3
    ids = [f"Q{i:03d}" for i in range(n)]
    slides = []
    for patient, grade in zip(ids, grades, strict=True):
        for s in range(1 + int(patient.endswith(("1", "5")))):
            slide_id = f"{patient}-S{s}"
            slides.append({"slide_id": slide_id, "patient_id": patient})
            width, height = int(rng.integers(4, 8)), int(rng.integers(3, 6))
            cells = np.array([(x, y) for x in range(width) for y in range(height) if rng.random() < 0.8])
            tiles = rng.normal(size=(len(cells), TILE_DIM))
            tiles[:, :3] += 1.0 * grade
            _write_h5(features_dir / f"{slide_id}.h5", tiles, 1000 + cells * STEP)
    pd.DataFrame(slides).to_parquet(tables_dir / "slides.parquet", index=False)

    genes = [gene for members in GROUPS.values() for gene in members]
    genomics = pd.DataFrame(rng.normal(size=(n, len(genes))), columns=[f"{g}_rnaseq" for g in genes])
    genomics[["TP53_rnaseq", "CD8A_rnaseq"]] += 1.2 * grades[:, None]
    genomics.insert(0, "patient_id", ids)
    genomics.to_parquet(tables_dir / "genomics.parquet", index=False)
    groups = pd.DataFrame(
        [{"feature": f"{g}_rnaseq", "gene": g, "group": group} for group, members in GROUPS.items() for g in members]
    )
    groups.to_parquet(tables_dir / "gene_groups.parquet", index=False)
    pd.DataFrame(
        {"patient_id": ids, "age": 50 + 6 * grades + rng.normal(0, 2, n), "sex": rng.choice(["F", "M"], n)}
    ).to_parquet(tables_dir / "clinical.parquet", index=False)

    time = np.exp(3.0 - 0.8 * grades + rng.normal(scale=0.3, size=n))
    event = (rng.random(n) < 0.8).astype(int)
    patients = pd.DataFrame(
        {
            "patient_id": ids,
            "grade": pd.array(grades, dtype="Int64"),
            "diagnosis": pd.array(np.minimum(grades, 1), dtype="Int64"),
            "aln": pd.array((grades >= 1).astype(int), dtype="Int64"),
            "survival_time": time,
            "event": pd.array(event, dtype="Int64"),
        }
    )
    patients.loc[3, "aln"] = pd.NA
    patients.to_parquet(tables_dir / "patients.parquet", index=False)
    (tables_dir / "labels.json").write_text(
        json.dumps({"grade": {"classes": ["2", "3", "4"]}, "diagnosis": {"classes": ["a", "b"]}, "aln": {"classes": ["0", "1"]}})
    )
    splits = ["train"] * 21 + ["val"] * 5 + ["test"] * 10
    order = rng.permutation(n)
    folds_tsv = root / "folds.tsv"
    pd.DataFrame({"patient_id": [ids[i] for i in order], "fold": 0, "split": splits}).to_csv(folds_tsv, sep="\t", index=False)
    return {"features_dir": features_dir, "tables_dir": tables_dir, "folds_tsv": folds_tsv}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _make_cohort(tmp_path_factory.mktemp("methods"))


def _train(cohort: dict[str, Path], out: Path, model: str, settings: TrainSettings = FAST, state: Path | None = None) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"out_checkpoint": out / "model.pt", "out_predictions": out / "pred.parquet", "out_history": out / "history.tsv"}
    train_fold(model_name=model, fold=0, settings=settings, state=state, **cohort, **paths)
    return paths


@pytest.fixture(scope="module")
def trained(cohort: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("trained")
    return {model: _train(cohort, root / model, model) for model in ("m2f", "m2f_separate", "ksf", "bidistill", "mm_impute", "abmil")}


@pytest.mark.parametrize("model", ["m2f", "m2f_separate", "ksf", "bidistill", "mm_impute", "abmil"])
def test_every_method_trains_and_reloads(model: str, cohort: dict[str, Path], trained: dict[str, dict[str, Path]]) -> None:
    paths = trained[model]
    predictions = pd.read_parquet(paths["out_predictions"])
    assert len(predictions) == 36 and (predictions["model"] == model).all()
    assert np.isfinite(predictions[["grade_prob_0", "grade_prob_1", "grade_prob_2", "risk"]].to_numpy()).all()
    history = pd.read_csv(paths["out_history"], sep="\t")
    assert len(history) == FAST.epochs and np.isfinite(history["train_loss"]).all()

    reloaded, content = load_trained_model(paths["out_checkpoint"])
    data = load_fold_data(fold=0, **cohort, tasks=FAST.tasks)
    again = predict_fold(reloaded, data, model_name=model, device=torch.device("cpu"), settings=FAST)
    pd.testing.assert_frame_equal(again, predictions, check_exact=False, rtol=1e-5, atol=1e-6)
    if model == "ksf":
        assert sorted(content["subspaces"]) == ["microenvironment", "tumour"]
        assert len(content["subspaces"]["tumour"]) == 4


def test_ksf_runs_repeat_exactly(cohort: dict[str, Path], trained: dict[str, dict[str, Path]], tmp_path: Path) -> None:
    again = _train(cohort, tmp_path, "ksf")
    pd.testing.assert_frame_equal(
        pd.read_parquet(trained["ksf"]["out_predictions"]), pd.read_parquet(again["out_predictions"]), check_exact=True
    )


def test_diagnosis_binary_and_cox_tasks(cohort: dict[str, Path], tmp_path: Path) -> None:
    settings = dataclasses.replace(
        FAST, tasks=("diagnosis", "binary", "survival"), survival_loss="cox", class_weights="balanced", monitor="auc", epochs=2
    )
    paths = _train(cohort, tmp_path, "m2f", settings)
    predictions = pd.read_parquet(paths["out_predictions"])
    for column in ("diagnosis", "diagnosis_pred", "diagnosis_prob_1", "binary", "binary_prob", "risk"):
        assert column in predictions.columns, column
    assert "grade_prob_0" not in predictions.columns
    assert predictions["binary"].isna().sum() == 1
    content = torch.load(paths["out_checkpoint"], weights_only=True)
    assert content["task_spec"]["survival_loss"] == "cox" and content["task_spec"]["n_classes"] == {"diagnosis": 2}
    metrics = evaluate_predictions([paths["out_predictions"]])
    assert set(metrics["task"]) == {"diagnosis", "binary", "survival"}


def test_a_step_is_the_exact_mean_whatever_the_batch_size(cohort: dict[str, Path]) -> None:
    settings = dataclasses.replace(FAST, dropout=0.0, max_tiles=0)
    data = load_fold_data(fold=0, **cohort, tasks=settings.tasks)
    spec = TaskSpec(tasks=settings.tasks, n_classes={"grade": 3}, n_bins=settings.n_bins)
    chunk = data.indices("train")[:8]
    gradients = []
    for batch_size in (1, 4, 8):
        torch.manual_seed(0)
        model = build_model("mm_baseline", InputDims(n_tiles_dim=TILE_DIM, n_genomic=data.n_genomic), task_spec=spec, hidden_dim=16, dropout=0.0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        run = _Run(
            model=model,
            optimizer=optimizer,
            data=data,
            objective=Objective.for_fold(data, settings, spec),
            settings=dataclasses.replace(settings, batch_size=batch_size),
            device=torch.device("cpu"),
        )
        model.train()
        run.step(chunk, np.random.default_rng(0))
        gradients.append(torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gradients[0], gradients[2], rtol=1e-4, atol=1e-6)


def test_resume_continues_a_run_exactly(cohort: dict[str, Path], tmp_path: Path) -> None:
    three = dataclasses.replace(FAST, epochs=3)
    straight = _train(cohort, tmp_path / "straight", "bidistill", three)
    state = tmp_path / "resumed" / "state.pt"
    _train(cohort, tmp_path / "resumed", "bidistill", dataclasses.replace(FAST, epochs=2), state=state)
    assert torch.load(state, weights_only=True)["epoch"] == 2
    resumed = _train(cohort, tmp_path / "resumed", "bidistill", three, state=state)
    assert torch.load(state, weights_only=True)["epoch"] == 3
    pd.testing.assert_frame_equal(
        pd.read_csv(straight["out_history"], sep="\t"), pd.read_csv(resumed["out_history"], sep="\t")
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet(straight["out_predictions"]), pd.read_parquet(resumed["out_predictions"])
    )
    # other settings: the state does not match and training starts afresh
    other = _train(cohort, tmp_path / "other", "bidistill", dataclasses.replace(FAST, lr=1e-3, epochs=1), state=state)
    assert len(pd.read_csv(other["out_history"], sep="\t")) == 1


def test_rewritten_features_do_not_resume_an_old_state(cohort: dict[str, Path], tmp_path: Path) -> None:
    """Features of another encoder under the same names and tile counts give another fingerprint."""
    import shutil

    from histofuse.training.state import fingerprint

    features = tmp_path / "features"
    shutil.copytree(cohort["features_dir"], features)
    moved = {**cohort, "features_dir": features}
    before = fingerprint("abmil", load_fold_data(fold=0, **moved, tasks=FAST.tasks), FAST)
    assert fingerprint("abmil", load_fold_data(fold=0, **moved, tasks=FAST.tasks), FAST) == before
    path = sorted(features.glob("*.h5"))[0]
    with h5py.File(path, "r+") as handle:
        handle["features"][...] = handle["features"][()] * 0.5  # same shape, other values
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert fingerprint("abmil", load_fold_data(fold=0, **moved, tasks=FAST.tasks), FAST) != before


def test_bags_are_read_lazily_and_subsampled(cohort: dict[str, Path]) -> None:
    tables = pd.read_parquet(cohort["tables_dir"] / "slides.parquet")
    slides = tables.groupby("patient_id")["slide_id"].apply(sorted).to_dict()
    store = open_bag_store(["Q001", "Q002"], slides, cohort["features_dir"])
    full = store.load(0)
    with h5py.File(cohort["features_dir"] / "Q001-S0.h5") as handle:
        first = handle["features"][()]
    assert full.features.shape[0] == store.n_tiles(0) > first.shape[0]  # two slides
    np.testing.assert_allclose(full.features[: first.shape[0]].numpy(), first)
    assert len({tuple(xy) for xy in full.coords.tolist()}) == full.features.shape[0]  # slides do not overlap
    part = store.load(0, max_tiles=5, rng=np.random.default_rng(0))
    assert part.features.shape == (5, TILE_DIM) and part.coords.shape == (5, 2)
    rows = {tuple(row) for row in np.round(full.features.numpy(), 5).tolist()}
    assert {tuple(row) for row in np.round(part.features.numpy(), 5).tolist()} <= rows


def test_missing_rate_table_for_bidistill_and_comparators(
    cohort: dict[str, Path], trained: dict[str, dict[str, Path]], tmp_path: Path
) -> None:
    rates = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    data = load_fold_data(fold=0, **cohort, tasks=FAST.tasks)
    preprocessing = tmp_path / "fold0.json"
    preprocessing.write_text(data.preprocessing.to_json())
    tables = []
    for model in ("bidistill", "mm_impute", "abmil"):
        out = tmp_path / f"{model}.tsv"
        table = missing_rate_fold(
            checkpoint=trained[model]["out_checkpoint"],
            fold=0,
            preprocessing=preprocessing,
            rates=rates,
            seed=0,
            out=out,
            **cohort,
        )
        tables.append(out)
        assert table["rate"].tolist() == rates and table["n_missing"].tolist() == [0, 2, 4, 6, 8, 10]
        predictions = pd.read_parquet(trained[model]["out_predictions"])
        test = predictions[predictions["split"] == "test"]
        reference = multiclass_auc(test["grade"].astype(int), test[[f"grade_prob_{k}" for k in range(3)]].to_numpy())
        assert table["auc"].iloc[0] == pytest.approx(reference, abs=1e-6)
        if model == "abmil":
            assert table["auc"].nunique() == 1
    combined = aggregate_missing_rates(tables, tmp_path / "missing_rate.tsv")
    assert len(combined) == 3 * len(rates)
    assert set(map(tuple, combined[["model", "rate"]].to_numpy().tolist())) == {
        (model, rate) for model in ("abmil", "bidistill", "mm_impute") for rate in rates
    }


def test_withheld_patients_are_nested_and_seeded() -> None:
    masks = [withheld(20, rate, seed=1, fold=2) for rate in (0.0, 0.4, 1.0)]
    assert [int(m.sum()) for m in masks] == [0, 8, 20] and not (masks[1] & ~masks[2]).any()
    assert (withheld(20, 0.4, seed=1, fold=2) == masks[1]).all()
    assert not (withheld(20, 0.4, seed=2, fold=2) == masks[1]).all()


def test_bf16_autocast_path(cohort: dict[str, Path], tmp_path: Path) -> None:
    assert FAST.autocast_dtype(torch.device("cpu")) is None
    assert FAST.autocast_dtype(torch.device("cuda")) == torch.bfloat16
    settings = dataclasses.replace(FAST, precision="bf16", epochs=1)
    assert settings.autocast_dtype(torch.device("cpu")) == torch.bfloat16
    paths = _train(cohort, tmp_path, "bidistill", settings)
    predictions = pd.read_parquet(paths["out_predictions"])
    assert np.isfinite(predictions[["grade_prob_0", "risk"]].to_numpy()).all()
    assert predictions["grade_prob_0"].dtype == np.float64


def test_learning_rate_schedule() -> None:
    settings = TrainSettings(epochs=10, lr=1.0, lr_schedule="cosine", warmup_epochs=2)
    rates = [_learning_rate(settings, epoch) for epoch in range(1, 11)]
    assert rates[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a > b for a, b in zip(rates[2:], rates[3:], strict=False)) and rates[-1] > 0
    assert _learning_rate(TrainSettings(lr=0.5), 7) == 0.5


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"monitor": "cindex", "tasks": ["grade"]}, "training.monitor"),
        ({"monitor": "auc", "tasks": ["survival"]}, "training.monitor"),
        ({"survival_loss": "cox", "batch_size": 1}, "training.batch_size"),
        ({"batch_size": 16, "grad_accum": 8}, "training.batch_size"),
        ({"lr_schedule": "step"}, "training.lr_schedule"),
        ({"precision": "fp16"}, "training.precision"),
        ({"subspaces": {"tumour": []}}, "training.subspaces"),
        ({"coordination": True}, "training.coordination"),
        ({"optimizer": "sgd"}, "training.optimizer"),
    ],
)
def test_new_settings_fail_loudly(mapping: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainSettings.from_mapping(mapping)


def test_ksf_step_coordinates_the_fused_classifier_weight(cohort: dict[str, Path]) -> None:
    from histofuse.models.gradient_coordination import coordinate_rows

    settings = dataclasses.replace(FAST, dropout=0.0, max_tiles=0, grad_accum=4, batch_size=4)
    data = load_fold_data(fold=0, **cohort, tasks=settings.tasks)
    spec = TaskSpec(tasks=settings.tasks, n_classes={"grade": 3}, n_bins=settings.n_bins)
    objective = Objective.for_fold(data, settings, spec)
    chunk = data.indices("train")[:4]
    subspaces = data.subspaces(SUBSPACES)

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(
            "ksf", InputDims(n_tiles_dim=TILE_DIM, n_genomic=data.n_genomic, subspaces=subspaces),
            task_spec=spec, hidden_dim=16, dropout=0.0, n_heads=2, offset_groups=2, head_dim=8,
        ).train()

    def step(coordination: str) -> torch.nn.Module:
        model = fresh()
        run = _Run(
            model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), data=data, objective=objective,
            settings=dataclasses.replace(settings, coordination=coordination), device=torch.device("cpu"),
        )
        run.step(chunk, np.random.default_rng(0))
        return model

    plain = step("none")
    heads = {id(head.weight) for head in plain.coordination_heads().values()}
    outputs = fresh()(
        [data.bags.load(int(i)).features for i in chunk], data.genomics[torch.as_tensor(chunk)], None,
        [data.bags.load(int(i)).coords for i in chunk],
    )
    changed = 0
    for mode in ("project", "reflect"):
        coordinated = step(mode)
        for (name, p_plain), p_coord in zip(plain.named_parameters(), coordinated.parameters(), strict=True):
            if id(p_plain) not in heads and p_plain.grad is not None:
                torch.testing.assert_close(p_coord.grad, p_plain.grad, msg=name)  # only the fused heads change
        for task, head in coordinated.coordination_heads().items():
            first, second = outputs["half_logits"][task]
            expected = coordinate_rows(
                plain.coordination_heads()[task].weight.grad, 16,
                objective.task_confidence(task, first, chunk), objective.task_confidence(task, second, chunk), mode,
            )
            torch.testing.assert_close(head.weight.grad, expected)
            changed += int(not torch.allclose(head.weight.grad, plain.coordination_heads()[task].weight.grad))
    # some row of this batch's fused heads has conflicting halves, so coordination changes the update
    assert changed > 0


# --- clinical data really missing ------------------------------------------------------------------


@pytest.fixture(scope="module")
def missing_cohort(cohort: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The cohort without clinical data for every third patient of each split: no row, or an empty one."""
    import shutil

    tables = tmp_path_factory.mktemp("missing") / "tables"
    shutil.copytree(cohort["tables_dir"], tables)
    folds = pd.read_csv(cohort["folds_tsv"], sep="\t", dtype={"patient_id": str})
    lacking = {
        split: sorted(folds.loc[folds["split"] == split, "patient_id"])[::3] for split in ("train", "val", "test")
    }
    empty_row = lacking["train"][0]
    clinical = pd.read_parquet(tables / "clinical.parquet")
    no_row = {patient for patients in lacking.values() for patient in patients} - {empty_row}
    clinical = clinical[~clinical["patient_id"].isin(no_row)].reset_index(drop=True)
    clinical.loc[clinical["patient_id"] == empty_row, ["age", "sex"]] = [np.nan, None]
    clinical.to_parquet(tables / "clinical.parquet", index=False)
    (tables / "lacking.json").write_text(json.dumps(sorted(no_row | {empty_row})))
    return {**cohort, "tables_dir": tables}


def _lacking(cohort: dict[str, Path]) -> set[str]:
    return set(json.loads((cohort["tables_dir"] / "lacking.json").read_text()))


def _labelled_indices(data: object, split: str) -> np.ndarray:
    return np.array([i for i in data.indices(split) if data.has_label(int(i))], dtype=np.int64)  # type: ignore[attr-defined]


def test_presence_is_read_from_the_raw_clinical_table(missing_cohort: dict[str, Path]) -> None:
    data = load_fold_data(fold=0, **missing_cohort, tasks=FAST.tasks)
    absent = {patient for patient, present in zip(data.patient_ids, data.clinical_present.tolist(), strict=True) if not present}
    assert absent == _lacking(missing_cohort) and len(absent) == 13
    # the preprocessing imputes the same row for all of them (with its missing indicators set)
    missing = ~data.clinical_present
    assert torch.equal(data.clinical[missing], data.clinical[missing][:1].expand(int(missing.sum()), -1))
    assert not torch.equal(data.clinical[~missing][:1], data.clinical[missing][:1])


def test_bidistill_routes_really_missing_patients_everywhere(missing_cohort: dict[str, Path], tmp_path: Path) -> None:
    from histofuse.training.trainer import _validation_score, infer

    paths = _train(missing_cohort, tmp_path, "bidistill")
    predictions = pd.read_parquet(paths["out_predictions"]).set_index("patient_id")
    model, _ = load_trained_model(paths["out_checkpoint"])
    data = load_fold_data(fold=0, **missing_cohort, tasks=FAST.tasks)
    bags = [data.bags.load(i).features for i in range(data.n_patients)]
    with torch.no_grad():
        slides_only = torch.softmax(model(bags)["grade"], dim=1).numpy()
        all_present = torch.softmax(model(bags, clinical=data.clinical)["grade"], dim=1).numpy()
    probabilities = predictions.loc[list(data.patient_ids), [f"grade_prob_{k}" for k in range(3)]].to_numpy()
    missing = ~data.clinical_present.numpy()
    # ordinary prediction: the slides-only branch for the patients without clinical data, the
    # multi-modal branch for the others
    np.testing.assert_allclose(probabilities[missing], slides_only[missing], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probabilities[~missing], all_present[~missing], rtol=1e-5, atol=1e-6)
    assert not np.allclose(probabilities[missing], all_present[missing], atol=1e-4)

    # early stopping scores the routed model on the validation part's real presence
    val = _labelled_indices(data, "val")
    assert missing[val].any() and not missing[val].all()
    spec = TaskSpec(tasks=FAST.tasks, n_classes={"grade": 3}, n_bins=FAST.n_bins)
    objective = Objective.for_fold(data, FAST, spec)
    loss, _ = _validation_score(model, data, val, objective, torch.device("cpu"))
    routed = infer(model, data, val, torch.device("cpu"), FAST)
    np.testing.assert_allclose(torch.softmax(routed["grade"], dim=1).numpy(), probabilities[val], rtol=1e-5, atol=1e-6)
    everyone = infer(model, data, val, torch.device("cpu"), FAST, clinical_present=torch.ones(len(val), dtype=torch.bool))
    assert loss == pytest.approx(float(objective.heads_loss(routed, val, objective.denominators(val))))
    assert loss != pytest.approx(float(objective.heads_loss(everyone, val, objective.denominators(val))))


def test_branch_losses_and_distillation_skip_patients_without_clinical_data(missing_cohort: dict[str, Path]) -> None:
    settings = dataclasses.replace(FAST, dropout=0.0, max_tiles=0)
    data = load_fold_data(fold=0, **missing_cohort, tasks=settings.tasks)
    spec = TaskSpec(tasks=settings.tasks, n_classes={"grade": 3}, n_bins=settings.n_bins)
    train = _labelled_indices(data, "train")
    present = data.clinical_present[torch.from_numpy(train)].numpy()
    lacking, having = train[~present], train[present]
    assert len(lacking) >= 2 and len(having) >= 2

    def step(chunk: np.ndarray) -> torch.nn.Module:
        torch.manual_seed(0)
        model = build_model(
            "bidistill", InputDims(n_tiles_dim=TILE_DIM, n_genomic=data.n_genomic, n_clinical=data.n_clinical),
            task_spec=spec, hidden_dim=16, dropout=0.0,
        ).train()
        run = _Run(
            model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), data=data,
            objective=Objective.for_fold(data, settings, spec), settings=settings, device=torch.device("cpu"),
        )
        run.step(chunk, np.random.default_rng(0))
        return model

    # patients who all lack clinical data leave the multi-modal branch untouched
    alone = step(lacking[:2])
    assert all(p.grad is None or torch.all(p.grad == 0) for p in alone.multimodal.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in alone.slide_only.parameters())
    # with patients of both kinds, the multi-modal branch gets the gradient of the mean over the
    # patients with clinical data: the others add nothing to it
    mixed = step(np.concatenate([having[:2], lacking[:2]]))
    present_only = step(having[:2])
    for (name, p_mixed), p_present in zip(mixed.multimodal.named_parameters(), present_only.multimodal.parameters(), strict=True):
        torch.testing.assert_close(p_mixed.grad, p_present.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_missing_rate_keeps_really_missing_patients_missing(missing_cohort: dict[str, Path], tmp_path: Path) -> None:
    paths = _train(missing_cohort, tmp_path / "model", "bidistill", dataclasses.replace(FAST, epochs=1))
    data = load_fold_data(fold=0, **missing_cohort, tasks=FAST.tasks)
    preprocessing = tmp_path / "fold0.json"
    preprocessing.write_text(data.preprocessing.to_json())
    test = data.indices("test")
    really_missing = int((~data.clinical_present[torch.from_numpy(test)]).sum())
    table = missing_rate_fold(
        checkpoint=paths["out_checkpoint"], fold=0, preprocessing=preprocessing, rates=[0.0, 1.0], seed=0,
        out=tmp_path / "rates.tsv", **missing_cohort,
    )
    assert really_missing > 0 and table["n_missing"].tolist() == [really_missing, len(test)]
    predictions = pd.read_parquet(paths["out_predictions"])
    scored = predictions[predictions["split"] == "test"]
    reference = multiclass_auc(scored["grade"].astype(int), scored[[f"grade_prob_{k}" for k in range(3)]].to_numpy())
    assert table["auc"].iloc[0] == pytest.approx(reference, abs=1e-6)


def test_m2f_separate_selects_each_task_copy_on_its_own(cohort: dict[str, Path], tmp_path: Path) -> None:
    settings = dataclasses.replace(FAST, epochs=6, patience=1, lr=1e-2)
    state_path = tmp_path / "state.pt"
    paths = _train(cohort, tmp_path, "m2f_separate", settings, state=state_path)
    state = torch.load(state_path, weights_only=True)
    checkpoint = torch.load(paths["out_checkpoint"], weights_only=True)
    history = pd.read_csv(paths["out_history"], sep="\t")
    tasks = state["tasks"]
    assert set(tasks) == {"grade", "survival"}
    # each copy's best epoch is where its own validation loss was lowest before it stopped
    data = load_fold_data(fold=0, **cohort, tasks=settings.tasks)
    assert all(1 <= progress["best_epoch"] <= len(history) for progress in tasks.values())
    assert checkpoint["best_epoch"] == max(progress["best_epoch"] for progress in tasks.values())
    assert len(history) == settings.epochs or all(progress["stopped"] for progress in tasks.values())
    for name, value in checkpoint["state_dict"].items():
        torch.testing.assert_close(value, state["best_model"][name])
    # each copy kept is the one of its own best epoch: its validation loss is its best score
    from histofuse.training.trainer import infer

    model, _ = load_trained_model(paths["out_checkpoint"])
    val = _labelled_indices(data, "val")
    objective = Objective.for_fold(data, settings, TaskSpec(tasks=settings.tasks, n_classes={"grade": 3}, n_bins=settings.n_bins))
    logits, denominators = infer(model, data, val, torch.device("cpu"), settings), objective.denominators(val)
    for task, progress in tasks.items():
        loss = float(objective.task_loss(task, logits[task], val)) / denominators[task]
        assert -loss == pytest.approx(progress["best_score"], rel=1e-5), task
    again = predict_fold(model, data, model_name="m2f_separate", device=torch.device("cpu"), settings=settings)
    pd.testing.assert_frame_equal(again, pd.read_parquet(paths["out_predictions"]), check_exact=False, rtol=1e-5, atol=1e-6)


def test_mm_impute_sees_the_real_presence_too(missing_cohort: dict[str, Path], tmp_path: Path) -> None:
    paths = _train(missing_cohort, tmp_path, "mm_impute", dataclasses.replace(FAST, epochs=1))
    predictions = pd.read_parquet(paths["out_predictions"]).set_index("patient_id")
    model, _ = load_trained_model(paths["out_checkpoint"])
    data = load_fold_data(fold=0, **missing_cohort, tasks=FAST.tasks)
    bags = [data.bags.load(i).features for i in range(data.n_patients)]
    with torch.no_grad():
        indicated = model(bags, clinical=data.clinical, clinical_present=data.clinical_present)["grade"]
        imputed_rows = model(bags, clinical=data.clinical)["grade"]
    probabilities = predictions.loc[list(data.patient_ids), [f"grade_prob_{k}" for k in range(3)]].to_numpy()
    np.testing.assert_allclose(probabilities, torch.softmax(indicated, dim=1).numpy(), rtol=1e-5, atol=1e-6)
    missing = ~data.clinical_present
    assert not torch.allclose(indicated[missing], imputed_rows[missing])

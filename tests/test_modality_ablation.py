"""Modality ablation: the drop computation on hand-checked predictions, the permutation of a trained
model's inputs, the report section and the workflow wiring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from histofuse.demo import DemoSpec
from histofuse.modality_ablation import ABLATION_COLUMNS, ablation_table
from histofuse.report.sections import modality_section
from histofuse.training import load_fold_data, load_trained_model, predict_fold, train_fold
from histofuse.training.ablation import ablation_fold, permutation, permuted_data
from test_training_methods import FAST, _make_cohort
from workflow_support import demo_config, jobs_run, make_cohort, snakemake, write_config

Y = [0, 0, 1, 1]
FULL = [0.1, 0.2, 0.8, 0.9]  # AUC 1
REVERSED = [0.9, 0.8, 0.2, 0.1]  # AUC 0
ONE_SWAP = [0.1, 0.8, 0.2, 0.9]  # pairs (0.1, 0.2) (0.1, 0.9) (0.8, 0.9) right, (0.8, 0.2) wrong: AUC 0.75


def _fold_file(path: Path, model: str, fold: int, predictions: dict[tuple[str, int], list[float]]) -> Path:
    rows = []
    for (modality, repeat), probs in predictions.items():
        for k, (y, p) in enumerate(zip(Y, probs, strict=True)):
            rows.append(
                {"patient_id": f"F{fold}P{k}", "fold": fold, "split": "test", "model": model, "binary": y,
                 "binary_prob": p, "modality": modality, "repeat": repeat}
            )
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def test_drop_on_a_hand_checked_case(tmp_path: Path) -> None:
    predictions = {
        ("full", 0): FULL,
        ("wsi", 0): FULL,  # the model ignores its slides: no wsi row
        ("wsi", 1): FULL,
        ("genomics", 0): REVERSED,
        ("genomics", 1): REVERSED,
        ("clinical", 0): ONE_SWAP,
        ("clinical", 1): FULL,
    }
    files = [_fold_file(tmp_path / f"fold{fold}.parquet", "fusion", fold, predictions) for fold in (0, 1)]
    out = tmp_path / "ablation.tsv"
    table = ablation_table(files, n_boot=50, seed=0, out=out)
    assert list(table.columns) == list(ABLATION_COLUMNS)
    assert table["modality"].tolist() == ["clinical", "genomics"]
    rows = table.set_index("modality")
    assert (rows["task"] == "binary").all() and (rows["metric"] == "auc").all()
    assert rows.loc["genomics", ["full", "permuted", "drop"]].tolist() == pytest.approx([1.0, 0.0, 1.0])
    # every resample with both classes keeps AUC 1 against AUC 0: the interval is the point
    assert rows.loc["genomics", ["ci_low", "ci_high"]].tolist() == pytest.approx([1.0, 1.0])
    assert rows.loc["clinical", ["full", "permuted", "drop"]].tolist() == pytest.approx([1.0, 0.875, 0.125])
    low, high = rows.loc["clinical", ["ci_low", "ci_high"]]
    assert 0.0 <= low <= high <= 0.5
    assert pd.read_csv(out, sep="\t").shape == (2, len(ABLATION_COLUMNS))
    again = ablation_table(files, n_boot=50, seed=0)
    pd.testing.assert_frame_equal(table, again)


def test_a_model_reading_one_modality_gets_no_row(tmp_path: Path) -> None:
    predictions = {("full", 0): FULL, ("wsi", 0): ONE_SWAP, ("genomics", 0): FULL, ("clinical", 0): FULL}
    table = ablation_table([_fold_file(tmp_path / "fold0.parquet", "abmil", 0, predictions)], n_boot=0, seed=0)
    assert table.empty and list(table.columns) == list(ABLATION_COLUMNS)


def test_permutation_is_seeded_and_a_permutation() -> None:
    order = permutation(10, seed=0, fold=1, modality="genomics", repeat=2)
    assert sorted(order) == list(range(10))
    assert np.array_equal(order, permutation(10, seed=0, fold=1, modality="genomics", repeat=2))
    assert not np.array_equal(order, permutation(10, seed=0, fold=1, modality="genomics", repeat=3))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _make_cohort(tmp_path_factory.mktemp("ablation"))


def test_permuted_data_moves_only_that_modality_of_the_test_patients(cohort: dict[str, Path]) -> None:
    data = load_fold_data(fold=0, **cohort, tasks=FAST.tasks)
    test = data.indices("test")
    order = np.roll(np.arange(len(test)), 1)
    shuffled = permuted_data(data, "genomics", test, order)
    assert torch.equal(shuffled.genomics[torch.from_numpy(test)], data.genomics[torch.from_numpy(test[order])])
    others = np.setdiff1d(np.arange(data.n_patients), test)
    assert torch.equal(shuffled.genomics[torch.from_numpy(others)], data.genomics[torch.from_numpy(others)])
    assert torch.equal(shuffled.clinical, data.clinical) and shuffled.bags is data.bags
    slides = permuted_data(data, "wsi", test, order)
    assert slides.bags.files[test[0]] == data.bags.files[test[order[0]]]
    assert torch.equal(slides.genomics, data.genomics)


@pytest.mark.parametrize("model", ["abmil", "concat"])
def test_ablation_fold_on_a_trained_model(model: str, cohort: dict[str, Path], tmp_path: Path) -> None:
    paths = {"out_checkpoint": tmp_path / "model.pt", "out_predictions": tmp_path / "pred.parquet", "out_history": tmp_path / "h.tsv"}
    train_fold(model_name=model, fold=0, settings=FAST, **cohort, **paths)
    data = load_fold_data(fold=0, **cohort, tasks=FAST.tasks)
    preprocessing = tmp_path / "fold0.json"
    preprocessing.write_text(data.preprocessing.to_json())
    out = tmp_path / "ablation.parquet"
    table = ablation_fold(checkpoint=paths["out_checkpoint"], fold=0, preprocessing=preprocessing, repeats=2, seed=0, out=out, **cohort)
    assert sorted(set(zip(table["modality"], table["repeat"], strict=True))) == sorted(
        [("full", 0)] + [(m, r) for m in ("wsi", "genomics", "clinical") for r in (0, 1)]
    )
    full = table[table["modality"] == "full"].drop(columns=["modality", "repeat"]).reset_index(drop=True)
    trained, _ = load_trained_model(paths["out_checkpoint"])
    reference = predict_fold(trained, data, model_name=model, device=torch.device("cpu"), settings=FAST)
    reference = reference[reference["split"] == "test"].reset_index(drop=True)
    pd.testing.assert_frame_equal(full, reference, check_exact=False, rtol=1e-5, atol=1e-6)
    summary = ablation_table([out], n_boot=20, seed=0)
    if model == "abmil":  # slides only: nothing to ablate
        assert summary.empty
    else:
        # concat fuses slides and genomics: its clinical permutations change nothing
        assert set(summary["modality"]) == {"wsi", "genomics"}
        assert set(summary["task"]) == set(FAST.tasks)


def test_report_section_with_and_without_the_table(tmp_path: Path) -> None:
    assert "evaluation.ablation_repeats" in modality_section(None)
    assert "evaluation.ablation_repeats" in modality_section(tmp_path / "absent.tsv")
    path = tmp_path / "modality_ablation.tsv"
    rows = [
        {"model": model, "task": task, "metric": "auc", "modality": modality, "full": 0.9, "permuted": 0.9 - drop,
         "drop": drop, "ci_low": drop - 0.05, "ci_high": drop + 0.05}
        for model in ("m2f", "concat")
        for task in ("grade", "binary")
        for modality, drop in (("wsi", 0.2), ("genomics", 0.1234))
    ]
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    html = modality_section(path)
    assert html.count('class="plot modality-ablation"') == 2
    assert "<h3>binary</h3>" in html and "<h3>grade</h3>" in html
    assert "0.123" in html and "0.073 – 0.173" in html
    pd.DataFrame(columns=list(ABLATION_COLUMNS)).to_csv(path, sep="\t", index=False)
    assert "nothing to ablate" in modality_section(path)


def test_workflow_runs_one_ablation_job_per_model_and_fold(tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path, DemoSpec(n_patients=6, n_slides=6, min_side_px=512, max_side_px=512))
    config = demo_config(tmp_path, cohort, folds={"k": 2}, training={"models": ["abmil", "mm_baseline"]})
    path = write_config(tmp_path / "config.yaml", config)
    jobs = jobs_run(snakemake("-n", "--cores", "1", "--configfile", str(path)))
    assert jobs["modality_ablation"] == 4 and jobs["modality_ablation_table"] == 1
    config["evaluation"] = {"ablation_repeats": 0}
    write_config(path, config)
    jobs = jobs_run(snakemake("-n", "--cores", "1", "--configfile", str(path)))
    assert jobs["modality_ablation"] == 0 and jobs["modality_ablation_table"] == 0 and jobs["report"] == 1


def test_auc_by_ranks_equals_the_reference_auc() -> None:
    from histofuse.metrics import multiclass_auc, multiclass_auc_by_ranks

    rng = np.random.default_rng(0)
    for n, k in ((12, 2), (30, 3), (9, 3)):
        for _ in range(20):
            y = rng.integers(0, k, n).astype(float)
            probs = rng.dirichlet(np.ones(k), n).round(1)  # rounded: ties
            probs /= probs.sum(axis=1, keepdims=True)
            if len(np.unique(y)) < 2:
                assert np.isnan(multiclass_auc_by_ranks(y, probs))
                continue
            assert multiclass_auc_by_ranks(y, probs) == pytest.approx(multiclass_auc(y, probs), abs=1e-12)

"""The methods and baselines through the real DAG, and workflow-level checks of their configuration.

One run on the reduced methods cohort (``histofuse demo --kind methods --reduced``: slides,
genomics and clinical data complementary) trains every model of
``config/examples/demo_methods.yaml`` (M2F and its separate-task ablation, KSF, bidirectional
distillation and its comparators, the baselines) on grade, survival and the binary ``aln`` task,
with the missing-rate evaluation and the modality ablation, so the slides are tiled and encoded once
for all of them (marked slow, `make test-all` runs it). The BCNB example trains the binary task.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from histofuse.demo import DemoSpec
from histofuse.demo_methods import make_methods_cohort, methods_spec
from histofuse.modality_ablation import ABLATION_COLUMNS
from workflow_support import REPO, demo_config, jobs_run, make_cohort, snakemake, write_config

EXAMPLE = yaml.safe_load((REPO / "config" / "examples" / "demo_methods.yaml").read_text())
MODELS = list(EXAMPLE["training"]["models"])
TASKS = list(EXAMPLE["training"]["tasks"])
# Models that read two or more modalities (the modality ablation keeps these).
MULTI_MODAL = {"m2f", "m2f_separate", "ksf", "bidistill", "mm_impute", "concat", "kronecker"}
# Which models can learn which task: grade and survival live in the slides and genomics, aln in the
# clinical table and the slides (README, "The methods cohort"). Measured on the full methods cohort
# (`make demo-methods`, 3 folds): grade AUC 0.68-0.85 and survival C 0.66-0.78 for the models that
# read slides or genomics, aln AUC 0.73-0.78 for those that read clinical data, no grade AUC above
# 0.86. The thresholds are chance plus a margin, for the reduced cohort's smaller folds.
LEARNS = {
    "grade": ("auc", 0.6, [m for m in MODELS if m != "clinical"]),
    "survival": ("cindex", 0.55, [m for m in MODELS if m != "clinical"]),
    "binary": ("auc", 0.6, ["bidistill", "mm_impute", "clinical"]),
}


@pytest.fixture(scope="module")
def methods_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("methods")
    cohort = make_methods_cohort(root / "cohort", methods_spec(reduced=True))
    config = demo_config(
        root,
        cohort,
        folds={"k": 3, "seed": 0, "val_fraction": 0.2},
        training=EXAMPLE["training"],
        missing_rate=EXAMPLE["missing_rate"],
    )
    path = write_config(root / "config.yaml", config)
    proc = snakemake("--profile", "profiles/default", "--cores", "2", "--configfile", str(path))
    assert proc.returncode == 0, proc.stderr[-6000:]
    jobs = jobs_run(proc)
    assert jobs["train"] == 3 * len(MODELS) and jobs["missing_rate"] == 3 * 3
    assert jobs["modality_ablation"] == 3 * len(MODELS)
    return Path(config["results"])


def _means(results: Path) -> pd.Series:
    summary = pd.read_csv(results / "metrics" / "summary.tsv", sep="\t")
    return summary.set_index(["model", "task", "metric"])["mean"]


@pytest.mark.slow
def test_each_model_learns_the_tasks_its_modalities_carry(methods_run: Path) -> None:
    value = _means(methods_run)
    for task, (metric, threshold, models) in LEARNS.items():
        for model in models:
            assert value[(model, task, metric)] > threshold, (model, task, value[(model, task, metric)])
    # no single modality gives the grade away: no model at the ceiling
    for model in MODELS:
        assert value[(model, "grade", "auc")] < 0.97, (model, value[(model, "grade", "auc")])


@pytest.mark.slow
def test_modality_ablation_covers_the_multi_modal_models(methods_run: Path) -> None:
    table = pd.read_csv(methods_run / "metrics" / "modality_ablation.tsv", sep="\t")
    assert tuple(table.columns) == ABLATION_COLUMNS
    assert set(table["model"]) == MULTI_MODAL
    assert set(table["task"]) == set(TASKS)
    assert (table["ci_low"] <= table["ci_high"]).all()
    # bidistill and mm_impute fuse slides with clinical data, concat and kronecker with genomics
    modalities = table.groupby("model")["modality"].agg(set)
    assert modalities["bidistill"] == {"wsi", "clinical"} and modalities["concat"] == {"wsi", "genomics"}
    assert (methods_run / "plots" / "modality_ablation.png").stat().st_size > 0
    assert 'class="plot modality-ablation"' in (methods_run / "report.html").read_text()


@pytest.mark.slow
def test_missing_rate_table_is_complete(methods_run: Path) -> None:
    table = pd.read_csv(methods_run / "metrics" / "missing_rate.tsv", sep="\t")
    assert list(table.columns[:4]) == ["model", "fold", "rate", "auc"]
    expected = {
        (model, fold, rate)
        for model in EXAMPLE["missing_rate"]["models"]
        for fold in range(3)
        for rate in EXAMPLE["missing_rate"]["rates"]
    }
    assert set(map(tuple, table[["model", "fold", "rate"]].to_numpy().tolist())) == expected
    assert len(table) == len(expected) and table["auc"].notna().all()
    # a slides-only model does not read clinical data: its AUC is the same at every rate
    assert (table[table["model"] == "abmil"].groupby("fold")["auc"].nunique() == 1).all()
    assert 'class="plot missing-rate"' in (methods_run / "report.html").read_text()
    # each run's resumable last-epoch state is kept beside its checkpoint
    states = list((methods_run / "models").glob("*/fold*.state.pt"))
    assert len(states) == 3 * len(MODELS)


@pytest.mark.slow
def test_bcnb_example_trains_the_binary_task(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "config" / "examples" / "bcnb_aln.yaml").read_text())
    config["results"] = str(tmp_path / "results")
    config["cohort"]["options"]["clinical"] = str(REPO / config["cohort"]["options"]["clinical"])
    path = write_config(tmp_path / "config.yaml", config)
    proc = snakemake("--profile", "profiles/default", "--cores", "2", "--configfile", str(path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = pd.read_csv(tmp_path / "results" / "metrics" / "summary.tsv", sep="\t")
    auc = summary.set_index(["model", "task", "metric"])["mean"][("clinical", "binary", "auc")]
    # ALN status is planted on tumour size, grade and Ki67 (measured: 0.67 over 5 folds)
    assert auc > 0.6
    predictions = pd.read_parquet(tmp_path / "results" / "predictions" / "clinical" / "fold0.parquet")
    assert {"binary", "binary_prob"} <= set(predictions.columns) and "risk" not in predictions.columns


def test_missing_rate_models_must_be_trained(tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path, DemoSpec(n_patients=3, n_slides=3, min_side_px=512, max_side_px=512))
    config = demo_config(tmp_path, cohort, training={"models": ["abmil"]}, missing_rate={"models": ["bidistill"]})
    path = write_config(tmp_path / "config.yaml", config)
    proc = snakemake("-n", "--cores", "1", "--configfile", str(path))
    assert proc.returncode != 0
    assert "missing_rate.models names ['bidistill']" in proc.stdout + proc.stderr

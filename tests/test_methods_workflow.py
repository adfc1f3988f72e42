"""M2F, KSF and bidirectional distillation through the real Snakemake DAG on the reduced demo cohort.

Runs the training section of ``config/examples/demo_methods.yaml`` (every method, its comparators
and the missing-rate evaluation) on a 30-patient demo cohort with 3 folds, then checks that each
method learns the demo's planted grade and survival signal and that ``missing_rate.tsv`` has
every rate × comparator × fold. The BCNB example trains the binary task (ALN status) from the
cohort's labels without slides.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from histofuse.demo import DemoSpec
from workflow_support import REPO, demo_config, jobs_run, make_cohort, snakemake, write_config

EXAMPLE = yaml.safe_load((REPO / "config" / "examples" / "demo_methods.yaml").read_text())


@pytest.fixture(scope="module")
def methods_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("methods_workflow")
    cohort = make_cohort(root, DemoSpec.reduced())
    config = demo_config(
        root, cohort, folds=EXAMPLE["folds"], training=EXAMPLE["training"], missing_rate=EXAMPLE["missing_rate"]
    )
    path = write_config(root / "config.yaml", config)
    proc = snakemake("--profile", "profiles/default", "--cores", "2", "--configfile", str(path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    jobs = jobs_run(proc)
    assert jobs["train"] == 6 * 3 and jobs["missing_rate"] == 3 * 3 and jobs["missing_rate_table"] == 1
    return path, Path(config["results"])


@pytest.mark.slow
def test_each_method_learns_the_planted_signal(methods_run: tuple[Path, Path]) -> None:
    _, results = methods_run
    summary = pd.read_csv(results / "metrics" / "summary.tsv", sep="\t")
    value = summary.set_index(["model", "task", "metric"])["mean"]
    for model in ("m2f", "m2f_separate", "ksf", "bidistill"):
        assert value[(model, "grade", "auc")] > 0.85, (model, value[(model, "grade", "auc")])
        assert value[(model, "survival", "cindex")] > 0.65, (model, value[(model, "survival", "cindex")])


@pytest.mark.slow
def test_missing_rate_table_is_complete(methods_run: tuple[Path, Path]) -> None:
    _, results = methods_run
    table = pd.read_csv(results / "metrics" / "missing_rate.tsv", sep="\t")
    assert list(table.columns[:4]) == ["model", "fold", "rate", "auc"]
    expected = {
        (model, fold, rate)
        for model in EXAMPLE["missing_rate"]["models"]
        for fold in range(EXAMPLE["folds"]["k"])
        for rate in EXAMPLE["missing_rate"]["rates"]
    }
    assert set(map(tuple, table[["model", "fold", "rate"]].to_numpy().tolist())) == expected
    assert len(table) == len(expected) and table["auc"].notna().all()
    # a slides-only model does not read clinical data: its AUC is the same at every rate
    assert (table[table["model"] == "abmil"].groupby("fold")["auc"].nunique() == 1).all()


@pytest.mark.slow
def test_states_are_kept_and_a_rerun_has_nothing_to_do(methods_run: tuple[Path, Path]) -> None:
    path, results = methods_run
    assert len(list((results / "models").glob("*/fold*.state.pt"))) == 6 * 3
    proc = snakemake("-n", "--cores", "2", "--configfile", str(path))
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr


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

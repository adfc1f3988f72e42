"""The methods and baselines through the real DAG, and workflow-level checks of their configuration.

One reduced-demo run trains the baselines and every method of ``config/examples/demo_methods.yaml``
(M2F and its separate-task ablation, KSF, bidirectional distillation and its comparators) with the
missing-rate evaluation, so the slides are tiled and encoded once for all of them (about 12
minutes on 2 cores: marked slow, `make test-all` runs it). The BCNB example trains the binary task.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from histofuse.demo import DemoSpec
from workflow_support import REPO, demo_config, jobs_run, make_cohort, snakemake, write_config

EXAMPLE = yaml.safe_load((REPO / "config" / "examples" / "demo_methods.yaml").read_text())
METHODS = list(EXAMPLE["training"]["models"])
BASELINES = ["mm_baseline", "snn", "kronecker"]
# Measured on this run (mean over 3 folds), grade AUC / survival c-index: mm_baseline 0.98 / 0.78,
# kronecker 0.86 / 0.74, snn (genomics only) 0.84 / 0.70.
GRADE_AUC = {"mm_baseline": 0.85, "kronecker": 0.75, "snn": 0.75}
CINDEX = {"mm_baseline": 0.65, "kronecker": 0.6, "snn": 0.6}


@pytest.fixture(scope="module")
def methods_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("methods")
    cohort = make_cohort(root, DemoSpec.reduced())
    config = demo_config(
        root,
        cohort,
        folds={"k": 3, "seed": 0, "val_fraction": 0.2},
        training={**EXAMPLE["training"], "models": [*BASELINES, *METHODS]},
        missing_rate=EXAMPLE["missing_rate"],
    )
    path = write_config(root / "config.yaml", config)
    proc = snakemake("--profile", "profiles/default", "--cores", "2", "--configfile", str(path))
    assert proc.returncode == 0, proc.stderr[-6000:]
    jobs = jobs_run(proc)
    assert jobs["train"] == 3 * (len(BASELINES) + len(METHODS)) and jobs["missing_rate"] == 3 * 3
    return Path(config["results"])


def _means(results: Path) -> pd.Series:
    summary = pd.read_csv(results / "metrics" / "summary.tsv", sep="\t")
    return summary.set_index(["model", "task", "metric"])["mean"]


@pytest.mark.slow
def test_each_baseline_learns_the_planted_signal(methods_run: Path) -> None:
    value = _means(methods_run)
    for model in BASELINES:
        assert value[(model, "grade", "auc")] > GRADE_AUC[model], (model, value[(model, "grade", "auc")])
        assert value[(model, "survival", "cindex")] > CINDEX[model], (model, value[(model, "survival", "cindex")])


@pytest.mark.slow
def test_each_method_learns_the_planted_signal(methods_run: Path) -> None:
    value = _means(methods_run)
    # measured on this cohort: grade AUC 1.0 for each, survival c-index 0.79-0.84
    for model in ("m2f", "m2f_separate", "ksf", "bidistill"):
        assert value[(model, "grade", "auc")] > 0.85, (model, value[(model, "grade", "auc")])
        assert value[(model, "survival", "cindex")] > 0.65, (model, value[(model, "survival", "cindex")])


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
    assert len(states) == 3 * (len(BASELINES) + len(METHODS))


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

"""Workflow-level checks of the training configuration: the BCNB example's binary task, and a
missing-rate evaluation of untrained models failing loudly. The methods themselves run through the
DAG in ``tests/test_workflow.py`` (one reduced-demo run for the baseline and every method).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from histofuse.demo import DemoSpec
from workflow_support import REPO, demo_config, make_cohort, snakemake, write_config


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

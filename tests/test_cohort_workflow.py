"""Published cohort formats through the whole workflow: TCGA-GBMLGG without slides.

Runs ``config/examples/tcga_gbmlgg.yaml`` (the real Pathomic Fusion tables in ../shared) on its
first three PNAS splits: tables, folds, per-fold preprocessing, the Cox and SNN baselines, the
evaluation and the report, with no slide stage in the DAG.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import shared_file
from histofuse.preprocess import FoldPreprocessing
from workflow_support import REPO, jobs_run, snakemake, write_config

# Full pipeline runs (minutes each): `make test-all` runs them.
pytestmark = pytest.mark.slow


def test_gbmlgg_example_runs_genomic_and_clinical_baselines(tmp_path: Path) -> None:
    shared_file("data", "tables", "tcga_gbmlgg_pathomic", "all_dataset.csv")
    config = yaml.safe_load((REPO / "config" / "examples" / "tcga_gbmlgg.yaml").read_text())
    config["results"] = str(tmp_path / "results")
    config["cohort"]["options"] = {k: str(REPO / v) for k, v in config["cohort"]["options"].items()}
    config["folds"]["k"] = 3
    config["training"].update({"epochs": 6, "patience": 3, "hidden_dim": 32})
    path = write_config(tmp_path / "config.yaml", config)

    proc = snakemake("--profile", "profiles/default", "--cores", "2", "--configfile", str(path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    jobs = jobs_run(proc)
    assert not {"tile", "extract_features"} & set(jobs)
    assert jobs["train"] == 9 and jobs["preprocess"] == 3

    results = tmp_path / "results"
    summary = pd.read_csv(results / "metrics" / "summary.tsv", sep="\t")
    cindex = summary[(summary["task"] == "survival") & (summary["metric"] == "cindex")].set_index("model")
    assert set(cindex.index) == {"cox_clinical", "cox_genomic", "snn"}
    # grade + subtype carry most of the glioma survival signal (published c-index ≈ 0.78)
    assert cindex.loc["cox_clinical", "mean"] > 0.72 and cindex.loc["cox_clinical", "n_folds"] == 3
    assert cindex.loc["snn", "mean"] > 0.65 and cindex.loc["cox_genomic", "mean"] > 0.65
    grade_auc = summary[(summary["model"] == "snn") & (summary["task"] == "grade") & (summary["metric"] == "auc")]
    assert float(grade_auc["mean"].iloc[0]) > 0.7

    # the published test parts are kept; each fold's preprocessing saw its training patients only
    folds = pd.read_csv(results / "folds" / "folds.tsv", sep="\t", dtype={"patient_id": str})
    published = pd.read_csv(results / "tables" / "cohort_splits.tsv", sep="\t", dtype={"patient_id": str})
    for fold in range(3):
        ours = folds[folds["fold"] == fold]
        given = published[published["fold"] == fold]
        assert set(ours.loc[ours["split"] == "test", "patient_id"]) == set(given.loc[given["split"] == "test", "patient_id"])
        fitted = FoldPreprocessing.read(results / "preprocessing" / f"fold{fold}.json")
        assert set(fitted.train_patients) == set(ours.loc[ours["split"] == "train", "patient_id"])
        genomic = pd.read_parquet(results / "tables" / "genomics.parquet").columns.drop("patient_id")
        kept = [c.name for c in fitted.genomics.numeric]
        assert set(kept) <= set(genomic) and len(genomic) == 80 and len(kept) >= 70
    assert (results / "report.html").is_file()

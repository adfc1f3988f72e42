"""Published table shapes through the real workflow, from config alone.

A BCNB-shaped clinical workbook with BCNB-style split id lists, and an MCAT-shaped table whose
expression columns are z-scores: tables, folds, per-fold preprocessing, training, evaluation and
the report, with no slide stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bcnb_published import write_bcnb_xlsx
from histofuse.preprocess import FoldPreprocessing
from workflow_support import jobs_run, snakemake, write_config

N_BCNB = 36

# Full pipeline runs (a minute or two each): `make test-all` runs them.
pytestmark = pytest.mark.slow


def _write_ids(path: Path, ids: list[int]) -> str:
    path.write_text("".join(f"{i}\r\n" for i in ids))  # as published on Windows: CRLF
    return str(path)


def test_bcnb_workbook_with_split_id_lists_runs_from_config(tmp_path: Path) -> None:
    clinical = write_bcnb_xlsx(tmp_path / "patient-clinical-data.xlsx", N_BCNB)
    ids = list(range(1, N_BCNB + 1))
    lists = {
        "train": _write_ids(tmp_path / "train_id.txt", ids[:24]),
        "val": _write_ids(tmp_path / "val_id.txt", ids[24:30]),
        "test": _write_ids(tmp_path / "test_id.txt", ids[30:]),
    }
    config = {
        "results": str(tmp_path / "results"),
        "cohort": {"format": "bcnb", "options": {"clinical": str(clinical)}},
        "modalities": ["clinical"],
        "samples": {"slides": None, "patients": None},
        "folds": {"source": "files", "files": lists, "k": 1, "stratify": "aln"},
        "training": {
            "models": ["clinical"],
            "tasks": ["binary"],
            "binary_label": "aln",
            "monitor": "auc",
            "epochs": 3,
            "patience": 2,
            "hidden_dim": 16,
            "batch_size": 4,
            "grad_accum": 4,
        },
    }
    proc = snakemake("--profile", "profiles/default", "--cores", "2", "--configfile", str(write_config(tmp_path / "c.yaml", config)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert jobs_run(proc)["train"] == 1
    results = tmp_path / "results"

    folds = pd.read_csv(results / "folds" / "folds.tsv", sep="\t", dtype={"patient_id": str})
    for part, members in (("train", ids[:24]), ("val", ids[24:30]), ("test", ids[30:])):
        assert sorted(folds.loc[folds["split"] == part, "patient_id"].astype(int)) == members
    clinical_table = pd.read_parquet(results / "tables" / "clinical.parquet").set_index("patient_id")
    assert clinical_table.loc["1", "ki67"] == 30.0 and clinical_table.loc["3", "ki67"] == 5.0
    notes = json.loads((results / "tables" / "labels.json").read_text())["preparation"]
    assert any("multiplied by 100" in n for n in notes) and any("full-width" in n for n in notes)
    report = (results / "report.html").read_text()
    assert "Data preparation" in report and "multiplied by 100" in report and "Histological grading" in report


def _mcat_table(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """An MCAT-format csv: one row per slide (some cases with two), z-scored ``_rnaseq`` columns."""
    risk = rng.normal(size=n)
    cases = pd.DataFrame(
        {
            "case_id": [f"TCGA-XX-{i:04d}" for i in range(n)],
            "site": "XX",
            "is_female": 1,
            "oncotree_code": rng.choice(["UEC", "USC"], size=n),
            "age": rng.integers(40, 85, size=n),
            "survival_months": np.round(rng.exponential(40.0 * np.exp(-0.8 * risk)), 2),
            "censorship": (rng.random(n) < 0.6).astype(int),
            "train": 1,
        }
    )
    for j in range(12):
        # z-scores over the whole cohort: about half the values negative
        values = rng.normal(size=n) + (0.8 * risk if j < 3 else 0.0)
        cases[f"GENE{j}_rnaseq"] = np.round((values - values.mean()) / values.std(), 4)
    for j in range(6):
        cases[f"GENE{j}_cnv"] = rng.choice([-1, 0, 0, 0, 1, 2], size=n)
    slides = cases.loc[cases.index.repeat(np.where(np.arange(n) % 5 == 0, 2, 1))].reset_index(drop=True)
    slides.insert(1, "slide_id", [f"{c}-{k}.svs" for k, c in enumerate(slides["case_id"])])
    return slides


def test_mcat_table_with_z_scored_expression_runs_from_config(tmp_path: Path) -> None:
    table = tmp_path / "tcga_xx_all_clean.csv"
    raw = _mcat_table(60, np.random.default_rng(4))
    raw.to_csv(table, index=True)  # MCAT's csv carries pandas' unnamed index column
    config = {
        "results": str(tmp_path / "results"),
        "cohort": {"format": "mcat", "options": {"table": str(table)}},
        "modalities": ["genomics"],
        "samples": {"slides": None, "patients": None},
        "folds": {"k": 2, "stratify": "none"},
        "training": {"models": ["snn"], "tasks": ["survival"], "epochs": 3, "patience": 2, "hidden_dim": 16},
    }
    proc = snakemake("--profile", "profiles/default", "--cores", "2", "--configfile", str(write_config(tmp_path / "c.yaml", config)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = tmp_path / "results"
    genomics = pd.read_parquet(results / "tables" / "genomics.parquet")
    assert (genomics.filter(like="_rnaseq") < 0).to_numpy().mean() > 0.3  # the z-scores reach the tables
    for fold in range(2):
        fitted = FoldPreprocessing.read(results / "preprocessing" / f"fold{fold}.json")
        rnaseq = [c for c in fitted.genomics.numeric if c.name.endswith("_rnaseq")]
        assert len(rnaseq) == 12 and not any(c.log1p for c in rnaseq)
        assert all(c.mean == 0.0 and c.std == 1.0 for c in rnaseq)  # left as they are
        cnv = [c for c in fitted.genomics.numeric if c.name.endswith("_cnv")]
        assert cnv and all(c.std != 1.0 for c in cnv)  # not standardised: z-scored on the fold
        assert any("'*_rnaseq' (12) are already standardised" in n for n in fitted.notes)
    assert "already standardised" in (results / "report.html").read_text()

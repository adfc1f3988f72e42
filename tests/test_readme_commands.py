"""The README's commands as written: `.venv/bin/snakemake ...` from a shell whose PATH lacks the venv."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from histofuse.demo import DemoSpec
from workflow_support import BIN, REPO, demo_config, jobs_run, make_cohort, path_without_venv, snakemake, write_config

# A genomic and clinical cohort without slides: every table, training, evaluation and report job.
COHORT = DemoSpec(n_patients=24, n_slides=24, min_side_px=1024, max_side_px=1280, seed=5)


def test_own_cohort_command_runs_without_the_venv_on_path(tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path, COHORT)
    config = demo_config(
        tmp_path,
        cohort,
        samples={"slides": None},
        modalities=["genomics", "clinical"],
        folds={"k": 2, "seed": 0, "val_fraction": 0.25},
        training={"models": ["snn"], "epochs": 2, "patience": 2, "hidden_dim": 16},
    )
    config_path = write_config(tmp_path / "my_cohort.yaml", config)
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = path_without_venv(os.environ.get("PATH", ""))
    assert str(BIN) not in env["PATH"].split(os.pathsep)

    # README, "Running on your own cohort": .venv/bin/snakemake --profile profiles/default --configfile my_cohort.yaml
    proc = snakemake("--profile", "profiles/default", "--configfile", str(config_path), cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert jobs_run(proc)["train"] == 2
    summary = pd.read_csv(tmp_path / "results" / "metrics" / "summary.tsv", sep="\t")
    assert set(summary["model"]) == {"snn"}
    assert (tmp_path / "results" / "report.html").is_file()

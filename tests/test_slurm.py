"""The slurm profile against a real SLURM controller (slurmctld + slurmd + slurmdbd on 127.0.0.1).

Marked ``slurm``: run by ``make test-slurm``. The cluster comes from ``tests/slurm/cluster.sh``
(root needed; Debian packages installed when missing), and is stopped by PID afterwards, also on
failure. The recipe to do the same by hand is in ``tests/slurm/README.md``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from histofuse.demo import DemoSpec
from workflow_support import REPO, demo_config, make_cohort, snakemake, write_config

pytestmark = pytest.mark.slurm

CLUSTER_SCRIPT = REPO / "tests" / "slurm" / "cluster.sh"
COHORT = DemoSpec(n_patients=8, n_slides=8, min_side_px=1024, max_side_px=1280, seed=3)
FOLDS = 2
# the profile packs per-slide jobs into group jobs; here all masks and tiles in one CPU job and the
# extractions in GPU jobs of SLIDES_PER_GPU_JOB slides
SLIDES_PER_GPU_JOB = 4


@pytest.fixture(scope="module")
def slurm_env() -> Iterator[dict[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("starting SLURM daemons needs root")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("SLURM is not installed and apt-get is not available to install it")
    # the munge and mysql users must reach it, so not under pytest's private (0700) tmp folder
    state = Path(tempfile.mkdtemp(prefix="histofuse-slurm-", dir="/tmp"))
    try:
        started = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "start", str(state)], capture_output=True, text=True, timeout=600, check=False
        )
        if started.returncode == 3:
            pytest.skip(f"SLURM packages cannot be installed here: {started.stderr.strip()}")
        assert started.returncode == 0, started.stderr[-3000:]
        env = {**os.environ, "SLURM_CONF": str(state / "etc" / "slurm.conf")}
        yield env
    finally:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(state)], timeout=120, check=False)
        shutil.rmtree(state, ignore_errors=True)


def sacct_jobs(env: dict[str, str]) -> pd.DataFrame:
    proc = subprocess.run(
        ["sacct", "-X", "-n", "-P", "--starttime", "now-1days", "-o", "JobID,JobName,State,AllocTRES"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=["job_id", "name", "state", "tres"])


def test_reduced_demo_runs_as_slurm_jobs(slurm_env: dict[str, str], tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path, COHORT)
    config = demo_config(
        tmp_path,
        cohort,
        folds={"k": FOLDS, "seed": 0, "val_fraction": 0.25},
        training={"epochs": 2, "patience": 2, "hidden_dim": 32, "grad_accum": 2},
    )
    config_path = write_config(tmp_path / "config.yaml", config)
    proc = snakemake(
        "--profile",
        "profiles/slurm",
        "--configfile",
        str(config_path),
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--seconds-between-status-checks",
        "2",
        # the one-node test cluster has 2 CPUs: one thread per extraction job (the profile asks for 4)
        "--set-threads",
        "extract_features=1",
        "--group-components",
        "slide_prep=50",
        f"slide_features={SLIDES_PER_GPU_JOB}",
        env=slurm_env,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    results = tmp_path / "results"
    assert (results / "report.html").is_file()
    summary = pd.read_csv(results / "metrics" / "summary.tsv", sep="\t")
    assert {"grade", "survival"} <= set(summary["task"])

    features = sorted((results / "features" / "efficientnet_lite0").glob("*.h5"))
    assert len(features) == COHORT.n_slides

    # every job but the exclusions check and the modality-ablation table (local rules) ran through
    # sbatch: the 8 tiling jobs in one group job, the 8 extractions in two, then per fold one
    # preprocessing, one training and one modality-ablation job (mm_baseline reads slides and
    # genomics), and four cohort-level jobs (tables, folds, evaluation, report)
    log = proc.stdout + proc.stderr
    submitted = log.count("has been submitted with SLURM jobid")
    gpu_groups = -(-COHORT.n_slides // SLIDES_PER_GPU_JOB)
    assert submitted == 1 + gpu_groups + 3 * FOLDS + 4
    assert "localrule exclusions:" in log and "localrule modality_ablation_table:" in log
    assert log.count("slurm_logs/group_slide_prep_tile/") == 1
    assert log.count("slurm_logs/group_slide_features_extract_features/") == gpu_groups
    for slide in (results / "tiles").glob("*.h5"):
        assert (results / "benchmarks" / "tile" / f"{slide.stem}.tsv").is_file()
    records = sacct_jobs(slurm_env)
    assert (records["state"] == "COMPLETED").sum() >= submitted
    completed = records[records["state"] == "COMPLETED"].tail(submitted)
    # the extraction groups and the training jobs were allocated a GPU; the other jobs were not
    with_gpu = completed["tres"].str.contains("gres/gpu", regex=False)
    assert with_gpu.sum() == gpu_groups + FOLDS
    assert (~with_gpu).sum() == 1 + 2 * FOLDS + 4

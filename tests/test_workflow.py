"""The real Snakemake DAG on the reduced demo cohort: dry run, lint, a full run and the report.

The run trains the multi-modal baseline and ABMIL (whose attention the report draws). The methods
run through the same DAG in ``tests/test_methods_workflow.py`` (marked slow).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml

from histofuse.demo import DemoSpec
from workflow_support import demo_config as make_config
from workflow_support import jobs_run, make_cohort, snakemake, write_config

MODELS = ["mm_baseline", "abmil"]


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    cohort = make_cohort(root, DemoSpec.reduced())
    config = make_config(
        root,
        cohort,
        folds={"k": 3, "seed": 0, "val_fraction": 0.2},
        training={
            "models": MODELS,
            "epochs": 25,
            "patience": 6,
            "hidden_dim": 64,
            "grad_accum": 4,
            "overrides": {"abmil": {"weight_decay": 1e-4}},
        },
    )
    return write_config(root / "config.yaml", config)


@pytest.fixture(scope="module")
def finished_run(demo_config: Path) -> Path:
    proc = snakemake("--profile", "profiles/default", "--cores", "2", "--configfile", str(demo_config))
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert jobs_run(proc)["train"] == 3 * len(MODELS)
    return Path(yaml.safe_load(demo_config.read_text())["results"])


TEST_CONFIG = Path(__file__).resolve().parents[1] / ".test" / "config" / "config.yaml"


def test_dry_run_lists_every_stage() -> None:
    """The committed test configuration (``.test/``) builds the whole DAG."""
    proc = snakemake("-n", "--cores", "2", "--configfile", str(TEST_CONFIG), "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    for rule in ("tile", "extract_features", "prepare_tables", "make_folds", "train", "evaluate", "modality_ablation", "report"):
        assert rule in text, rule


def test_lint_is_clean() -> None:
    proc = snakemake("--lint", "--configfile", str(TEST_CONFIG))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Congratulations" in proc.stdout + proc.stderr or "lint" not in (proc.stdout + proc.stderr).lower()


def test_full_run_learns_the_planted_signal(finished_run: Path) -> None:
    summary = pd.read_csv(finished_run / "metrics" / "summary.tsv", sep="\t")
    from histofuse.evaluate import SUMMARY_COLUMNS

    assert tuple(summary.columns) == SUMMARY_COLUMNS
    assert {"mean", "sd", "n_folds", "ci_low", "ci_high"} <= set(summary.columns)
    value = summary.set_index(["model", "task", "metric"])["mean"]
    assert value[("mm_baseline", "survival", "cindex")] > 0.65
    assert value[("mm_baseline", "grade", "auc")] > 0.70


def test_full_run_artifacts_describe_themselves(finished_run: Path) -> None:
    tiles = sorted((finished_run / "tiles").glob("*.h5"))
    features = sorted((finished_run / "features" / "efficientnet_lite0").glob("*.h5"))
    assert tiles and len(tiles) == len(features)
    with h5py.File(tiles[0]) as h5:
        assert h5["coords"].shape[1] == 2 and h5.attrs["target_mpp"] == 0.5 and h5.attrs["tile_px"] == 256
    with h5py.File(features[0]) as h5:
        assert h5["features"].shape[1] == 1280 == h5.attrs["dim"]
        assert h5.attrs["encoder"] == "efficientnet_lite0" and len(h5.attrs["weights_sha256"]) == 64
    folds = pd.read_csv(finished_run / "folds" / "folds.tsv", sep="\t")
    assert list(folds.columns) == ["patient_id", "fold", "split"]
    html = (finished_run / "report.html").read_text()
    assert "data:image/png;base64," in html and "mm_baseline" in html
    # abmil is trained, so the first slides get attention heatmaps, drawn into the report
    heatmaps = sorted((finished_run / "plots" / "attention").glob("*.png"))
    assert len(heatmaps) == 4 and all(path.stat().st_size > 1000 for path in heatmaps)
    assert html.count('class="plot attention"') == 4
    assert not list(finished_run.rglob(".*.tmp"))


def test_overrides_reach_their_model_only(finished_run: Path) -> None:
    import torch

    decay = {}
    for model in MODELS:
        content = torch.load(finished_run / "models" / model / "fold0.pt", map_location="cpu", weights_only=True)
        decay[model] = content["settings"]["weight_decay"]
        assert content["settings"]["epochs"] == 25
    assert decay == {"mm_baseline": 1e-5, "abmil": 1e-4}


def test_bad_override_stops_the_run_before_any_job(demo_config: Path, tmp_path: Path) -> None:
    config = yaml.safe_load(demo_config.read_text())
    config["training"]["overrides"] = {"abmil": {"lr": -1.0}}
    proc = snakemake("-n", "--cores", "2", "--configfile", str(write_config(tmp_path / "bad.yaml", config)))
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "training.overrides.abmil" in text and "lr" in text and "Fix:" in text
    assert "rule tile" not in text


def test_gpu_decoder_on_the_cpu_stops_the_run_before_any_job(demo_config: Path, tmp_path: Path) -> None:
    config = yaml.safe_load(demo_config.read_text())
    config["features"] = {**config.get("features", {}), "device": "cpu", "region_decoder": "gpu"}
    proc = snakemake("-n", "--cores", "2", "--configfile", str(write_config(tmp_path / "gpu.yaml", config)))
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "features.region_decoder is 'gpu' but features.device is 'cpu'" in text and "Fix:" in text
    assert "rule tile" not in text


def test_rerun_has_nothing_to_do(finished_run: Path, demo_config: Path) -> None:
    proc = snakemake("-n", "--cores", "2", "--configfile", str(demo_config))
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_snakemake_report(finished_run: Path, demo_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "snakemake_report.zip"
    proc = snakemake("--configfile", str(demo_config), "--report", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.exists() and out.stat().st_size > 10_000


def test_ksf_with_a_batch_of_one_stops_the_run_before_any_job(tmp_path: Path) -> None:
    cohort = make_cohort(tmp_path, DemoSpec(n_patients=3, n_slides=3, min_side_px=512, max_side_px=512))
    config = make_config(
        tmp_path,
        cohort,
        training={
            "models": ["ksf"],
            "subspaces": {"tumour": ["tumor_suppressor", "oncogene"], "microenvironment": ["immune", "stroma"]},
            "overrides": {"ksf": {"batch_size": 1}},
        },
    )
    proc = snakemake("-n", "--cores", "1", "--configfile", str(write_config(tmp_path / "config.yaml", config)))
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "ksf needs batch_size >= 2, got 1" in text and "training.overrides.ksf.batch_size" in text
    assert "rule tile" not in text


def test_folds_are_checked_before_any_job_unless_the_run_stops_before_them(tmp_path: Path) -> None:
    """The committed 9-patient cohort cannot make 5 folds: the full run stops at DAG build, naming
    the fix; `--until tile` (and feature files as targets) still tile a cohort that small."""
    overlay = write_config(tmp_path / "five_folds.yaml", {"folds": {"k": 5}, "results": str(tmp_path / "results")})
    configs = ("--configfile", str(TEST_CONFIG), str(overlay))
    full = snakemake("-n", "--cores", "1", *configs)
    assert full.returncode != 0
    text = full.stdout + full.stderr
    assert "9 patients are too few for 5 folds" in text and "Fix: lower folds.k" in text
    until = snakemake("-n", "--cores", "1", "--until", "tile", *configs)
    assert until.returncode == 0, until.stderr[-3000:]
    assert "tile" in until.stdout and "make_folds" not in until.stdout
    features = str(tmp_path / "results" / "features" / "efficientnet_lite0" / "DEMO-P001-A.h5")
    targeted = snakemake("-n", "--cores", "1", features, *configs)
    assert targeted.returncode == 0, targeted.stderr[-3000:]
    assert "extract_features" in targeted.stdout and "make_folds" not in targeted.stdout


def test_cleared_metadata_keeps_tiles_and_features(finished_run: Path, demo_config: Path, tmp_path: Path) -> None:
    """README, "Recent changes": after `--cleanup-metadata` on the tiles and features files, a changed
    command (as after an upgrade; here a changed tiling setting) no longer re-tiles or re-extracts."""
    config = yaml.safe_load(demo_config.read_text())
    config["tiling"] = {**config.get("tiling", {}), "tissue_threshold": 0.45}
    changed = write_config(tmp_path / "changed.yaml", config)
    before = snakemake("-n", "--cores", "1", "--configfile", str(changed))
    assert before.returncode == 0 and jobs_run(before)["tile"] > 0
    files = [str(p) for p in sorted((finished_run / "tiles").glob("*.h5"))]
    files += [str(p) for p in sorted((finished_run / "features").glob("*/*.h5"))]
    cleared = snakemake("--configfile", str(demo_config), "--cleanup-metadata", *files)
    assert cleared.returncode == 0, cleared.stderr[-3000:]
    after = snakemake("-n", "--cores", "1", "--configfile", str(changed))
    assert after.returncode == 0 and jobs_run(after)["tile"] == 0 and jobs_run(after)["extract_features"] == 0

"""Stage-level reruns on a tiny demo cohort: Snakemake redoes exactly what a change affects.

Each scenario runs in a copy of one finished base run: the project folder with relative paths,
its results and Snakemake's own records (``.snakemake/metadata``), mtimes kept, as a user's
project folder would be. Snakemake runs there with the repository's Snakefile and profile.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from workflow_support import REPO, TINY, demo_config, jobs_run, make_cohort, slides_run, snakemake, write_config

# Full pipeline runs (minutes each): `make test-all` runs them.
pytestmark = pytest.mark.slow

COHORT_LEVEL = {
    "prepare_tables", "make_folds", "preprocess", "train", "evaluate", "modality_ablation",
    "modality_ablation_table", "report", "all",
}
SLIDE_LEVEL = {"tile", "extract_features"}
FAST_TRAINING = {"epochs": 2, "patience": 2, "hidden_dim": 32, "grad_accum": 2}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run over all slides but the last one, which the slide scenario adds."""
    root = tmp_path_factory.mktemp("reruns")
    cohort = make_cohort(root, TINY)
    sheet = pd.read_csv(cohort["slides_sheet"], sep="\t")
    sheet.iloc[:-1].to_csv(root / "cohort" / "slides_base.tsv", sep="\t", index=False)
    (root / "config").symlink_to(REPO / "config", target_is_directory=True)
    config = demo_config(Path("."), cohort, folds={"k": 2, "seed": 0, "val_fraction": 0.25}, training=FAST_TRAINING)
    config = relative_to(config, root)
    config["samples"]["slides"] = "cohort/slides_base.tsv"
    write_config(root / "project.yaml", config)
    proc = run(root)
    assert jobs_run(proc)["extract_features"] == TINY.n_slides - 1
    return root


def relative_to(config: dict[str, Any], root: Path) -> dict[str, Any]:
    """``config`` with every path under ``root`` made relative to it."""
    return yaml.safe_load(yaml.safe_dump(config).replace(f"{root}/", ""))


def clone(base: Path, dst: Path) -> dict[str, Any]:
    """Copy the project folder ``base`` (cohort, results, Snakemake records) to ``dst``; its config."""
    shutil.copytree(base, dst, symlinks=True, dirs_exist_ok=True, ignore=shutil.ignore_patterns("locks"))
    return yaml.safe_load((dst / "project.yaml").read_text())


def run(project: Path, *extra: str):  # type: ignore[no-untyped-def]
    proc = snakemake(
        "--snakefile",
        str(REPO / "workflow" / "Snakefile"),
        "--profile",
        str(REPO / "profiles" / "default"),
        "--cores",
        "2",
        "--configfile",
        "project.yaml",
        *extra,
        cwd=project,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc


def test_editing_genomics_reruns_only_cohort_stages(base: Path, tmp_path: Path) -> None:
    config = clone(base, tmp_path)
    genomics_path = tmp_path / config["tables"]["genomics"]
    genomics = pd.read_csv(genomics_path, sep="\t")
    genomics.loc[0, "TP53_mut"] = 1 - genomics.loc[0, "TP53_mut"]
    genomics.to_csv(genomics_path, sep="\t", index=False)

    ran = jobs_run(run(tmp_path))
    assert {"prepare_tables", "train", "evaluate", "report"} <= set(ran)
    assert set(ran) <= COHORT_LEVEL
    assert not SLIDE_LEVEL & set(ran)


def test_adding_a_slide_processes_only_that_slide(base: Path, tmp_path: Path) -> None:
    config = clone(base, tmp_path)
    new_slide = pd.read_csv(tmp_path / "cohort" / "slides.tsv", sep="\t")["slide_id"].iloc[-1]
    config["samples"]["slides"] = "cohort/slides.tsv"
    write_config(tmp_path / "project.yaml", config)

    proc = run(tmp_path)
    for rule in SLIDE_LEVEL:
        assert slides_run(proc, rule) == {new_slide}, (rule, proc.stderr[-3000:])
    assert {"prepare_tables", "train", "evaluate", "report"} <= set(jobs_run(proc))


def test_changing_the_encoder_reextracts_but_keeps_tiles(base: Path, tmp_path: Path) -> None:
    import timm

    config = clone(base, tmp_path)
    weights = tmp_path / "mobilenet.pt"
    torch.manual_seed(0)
    torch.save(timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=0).state_dict(), weights)
    config["features"] = {**config["features"], "encoder": "timm:mobilenetv3_small_050", "weights": weights.name}
    write_config(tmp_path / "project.yaml", config)

    ran = jobs_run(run(tmp_path))
    assert ran["extract_features"] == TINY.n_slides - 1
    assert ran["tile"] == 0
    assert {"train", "evaluate", "report"} <= set(ran)
    assert "prepare_tables" not in ran and "make_folds" not in ran
    assert len(list((tmp_path / "results" / "features" / "timm:mobilenetv3_small_050").glob("*.h5"))) == TINY.n_slides - 1


def test_forcerun_redoes_a_stage_and_what_follows(base: Path, tmp_path: Path) -> None:
    clone(base, tmp_path)
    forced = jobs_run(run(tmp_path, "--forcerun", "make_folds"))
    assert forced["make_folds"] == 1 and {"train", "evaluate", "report"} <= set(forced)
    assert set(forced) <= COHORT_LEVEL and "prepare_tables" not in forced


def test_until_stops_after_a_stage(base: Path, tmp_path: Path) -> None:
    config = clone(base, tmp_path)
    new_slide = pd.read_csv(tmp_path / "cohort" / "slides.tsv", sep="\t")["slide_id"].iloc[-1]
    config["samples"]["slides"] = "cohort/slides.tsv"
    write_config(tmp_path / "project.yaml", config)

    until = run(tmp_path, "--until", "tile")
    assert dict(jobs_run(until)) == {"tile": 1}
    assert slides_run(until, "tile") == {new_slide}
    assert (tmp_path / "results" / "tiles" / f"{new_slide}.h5").is_file()
    assert not (tmp_path / "results" / "features" / "efficientnet_lite0" / f"{new_slide}.h5").exists()


def test_interrupted_run_resumes_without_redoing_finished_slides(base: Path, tmp_path: Path) -> None:
    """The state a run stopped during extraction leaves: some slides' features, no cohort outputs."""
    clone(base, tmp_path)
    results = tmp_path / "results"
    features = sorted((results / "features" / "efficientnet_lite0").glob("*.h5"))
    unfinished = {path.stem for path in features[:2]}
    for path in features[:2]:
        path.unlink()
    for folder in ("models", "predictions", "metrics"):
        shutil.rmtree(results / folder)
    (results / "report.html").unlink()

    proc = run(tmp_path)
    assert slides_run(proc, "extract_features") == unfinished
    assert not slides_run(proc, "tile")
    assert (results / "report.html").is_file()


@pytest.mark.parametrize("output", ["masks/{slide}.png", "tiles/{slide}.h5", "features/efficientnet_lite0/{slide}.h5"])
def test_a_deleted_per_slide_file_is_made_again(output: str, base: Path, tmp_path: Path) -> None:
    """A file a user deletes comes back on the next run, and what reads it runs again after it."""
    clone(base, tmp_path)
    slide = pd.read_csv(tmp_path / "cohort" / "slides_base.tsv", sep="\t")["slide_id"].iloc[0]
    path = tmp_path / "results" / output.format(slide=slide)
    path.unlink()

    proc = run(tmp_path)
    assert path.is_file(), proc.stdout[-3000:]
    assert slides_run(proc, "extract_features") == {slide}
    assert slides_run(proc, "tile") == (set() if output.startswith("features") else {slide})
    assert {"exclusions", "train", "evaluate", "report"} <= set(jobs_run(proc))


def test_switching_on_error_keeps_finished_slides(base: Path, tmp_path: Path) -> None:
    """on_error changes what a failing slide does, never a good slide's outputs: nothing reruns."""
    config = clone(base, tmp_path)
    config["on_error"] = "skip"
    write_config(tmp_path / "project.yaml", config)
    ran = jobs_run(run(tmp_path))
    assert set(ran) <= {"all"}, ran

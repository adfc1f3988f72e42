"""Interruption and concurrency: kill -9 mid-write, a full disk, and two runs on one results folder.

Real processes throughout: the ``histofuse`` command line or Snakemake runs as a subprocess and is
killed with SIGKILL once it writes; a full disk is a file-size limit (``RLIMIT_FSIZE``) on a real
writer, which then gets EFBIG as it would ENOSPC.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import shared_file
from histofuse.demo import DemoSpec, make_demo_cohort
from histofuse.exclusions import read_exclusions
from histofuse.slides.pyramid import write_pyramidal_tiff
from histofuse.slides.reader import open_slide
from workflow_support import BIN, REPO, demo_config, slides_run, snakemake, write_config

HISTOFUSE = str(BIN / "histofuse")
CMU = ("data", "slides", "cmu_small_region.svs")


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (code {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _kill9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _temps(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


# --------------------------------------------------------------------------------------- extraction


@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A pyramid of a square of the real CMU slide and its tiles file (about 60 tiles)."""
    root = tmp_path_factory.mktemp("tiled")
    with open_slide(shared_file(*CMU)) as source:
        image = source.read_region((512, 1024), 0, (1024, 1024))
    slide = root / "slide.tiff"
    write_pyramidal_tiff(slide, image, mpp=0.499, levels=3)
    tiles = root / "tiles.h5"
    subprocess.run(
        [HISTOFUSE, "tile", "--slide", str(slide), "--tile-mpp", "0.5", "--tile-px", "128",
         "--mask", str(root / "mask.png"), "--mask-qc", str(root / "mask_qc.png"), "--out", str(tiles),
         "--qc", str(root / "qc.png")],
        check=True, capture_output=True, env=_env(),
    )
    return slide, tiles


def test_kill_9_during_extraction_leaves_no_output_and_the_rerun_completes(tiled: tuple[Path, Path], tmp_path: Path) -> None:
    slide, tiles = tiled
    out = tmp_path / "features" / "slide.h5"
    command = [HISTOFUSE, "extract", "--slide", str(slide), "--tiles", str(tiles), "--encoder", "efficientnet_lite0",
               "--device", "cpu", "--batch-size", "1", "--region-px", "0", "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), start_new_session=True)
    _wait_for(lambda: bool(out.parent.is_dir() and _temps(out.parent)), proc, "the features file was being written")
    time.sleep(0.3)
    _kill9(proc)
    assert not out.exists()  # only the hidden temporary file: never taken for the output
    assert _temps(out.parent)

    subprocess.run([*command, "--batch-size", "64"], check=True, capture_output=True, env=_env())
    with h5py.File(tiles) as h5:
        n_tiles = h5["coords"].shape[0]
    with h5py.File(out) as h5:
        assert h5["features"].shape == (n_tiles, 1280) and np.isfinite(h5["features"][()]).all()
    assert not _temps(out.parent)  # the killed write's leftover is gone


# ----------------------------------------------------------------------------------------- training


def _tables(root: Path) -> dict[str, Path]:
    """Tables, folds and the fitted preprocessing of a 40-patient cohort without slides."""
    from histofuse import cli

    rng = np.random.default_rng(0)
    n = 40
    ids = [f"P{i:02d}" for i in range(n)]
    pd.DataFrame({"patient_id": ids, "grade": rng.choice(["2", "3", "4"], n),
                  "survival_months": rng.uniform(1, 60, n).round(1), "event": rng.integers(0, 2, n)}).to_csv(
        root / "patients.tsv", sep="\t", index=False)
    genes = pd.DataFrame(rng.normal(size=(n, 30)), columns=[f"G{j}_rnaseq" for j in range(30)])
    genes.insert(0, "patient_id", ids)
    genes.to_csv(root / "genomics.tsv", sep="\t", index=False)
    tables, folds, pre = root / "tables", root / "folds.tsv", root / "fold0.json"
    for args in (
        ["prepare-tables", "--patients", str(root / "patients.tsv"), "--genomics", str(root / "genomics.tsv"),
         "--modalities", "genomics", "--out-dir", str(tables)],
        ["make-folds", "--patients", str(tables / "patients.parquet"), "--k", "2", "--tasks", "grade", "survival",
         "--out", str(folds)],
        ["preprocess", "--tables-dir", str(tables), "--folds", str(folds), "--fold", "0", "--out", str(pre)],
    ):
        assert cli.main(args) == 0
    return {"tables": tables, "folds": folds, "preprocessing": pre}


def test_kill_9_during_training_leaves_no_output_and_the_rerun_completes(tmp_path: Path) -> None:
    inputs = _tables(tmp_path)
    out = tmp_path / "out"
    outputs = {"checkpoint": out / "snn" / "fold0.pt", "history": out / "snn" / "fold0_history.tsv",
               "predictions": out / "predictions" / "fold0.parquet"}

    def command(epochs: int) -> list[str]:
        settings = f'{{"epochs": {epochs}, "patience": {epochs}, "hidden_dim": 16, "device": "cpu"}}'
        return [HISTOFUSE, "train", "--model", "snn", "--fold", "0", "--features-dir", str(tmp_path / "none"),
                "--tables-dir", str(inputs["tables"]), "--folds", str(inputs["folds"]), "--no-wsi",
                "--preprocessing", str(inputs["preprocessing"]), "--settings", settings,
                *[arg for name, path in outputs.items() for arg in (f"--{name}", str(path))]]

    log = tmp_path / "train.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen(command(100_000), stdout=handle, stderr=handle, env=_env(), start_new_session=True)
        _wait_for(lambda: "training on" in log.read_text(), proc, "training started")
        time.sleep(0.5)
        _kill9(proc)
    assert not any(path.exists() for path in outputs.values())

    subprocess.run(command(3), check=True, capture_output=True, env=_env())
    predictions = pd.read_parquet(outputs["predictions"])
    folds = pd.read_csv(inputs["folds"], sep="\t", dtype={"patient_id": str})
    assert sorted(predictions["patient_id"]) == sorted(folds.loc[folds["fold"] == 0, "patient_id"])
    assert torch.load(outputs["checkpoint"], map_location="cpu", weights_only=True)
    assert len(pd.read_csv(outputs["history"], sep="\t")) == 3


# ---------------------------------------------------------------------------------------- full disk

WRITERS = {
    "hdf5": (
        "from histofuse.slides.tiling import TileGrid, write_tiles_h5\n"
        "grid = TileGrid(coords=np.zeros((200_000, 2), dtype=np.int64), tissue=np.ones(200_000, dtype=np.float32),"
        " attrs={'read_downsample': 1.0, 'read_level_width': 1, 'read_level_height': 1, 'tile_px': 256,"
        " 'read_level': 0, 'tile_px_level0': 256, 'overlap_px': 0})\n"
        "write_tiles_h5(grid, TARGET, slide_id='S1', reader='openslide')\n"
    ),
    "parquet": (
        "import pandas as pd\nfrom histofuse.tables import write_parquet\n"
        "write_parquet(pd.DataFrame(np.random.default_rng(0).normal(size=(100_000, 8))).add_prefix('c'), TARGET)\n"
    ),
}


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("existing", [False, True], ids=["new", "replacing"])
def test_full_disk_leaves_no_truncated_output(writer: str, existing: bool, tmp_path: Path) -> None:
    target = tmp_path / f"out.{writer}"
    if existing:
        target.write_bytes(b"complete earlier output")
    code = f"import numpy as np\nfrom pathlib import Path\nTARGET = Path({str(target)!r})\n" + WRITERS[writer]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=_limit_file_size,
                          env=_env(), check=False)
    assert proc.returncode != 0 and ("File too large" in proc.stderr or "EFBIG" in proc.stderr or "27" in proc.stderr), proc.stderr[-2000:]
    if existing:
        assert target.read_bytes() == b"complete earlier output"
    else:
        assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ([target.name] if existing else [])


# ------------------------------------------------------------------------------------- concurrency


def _project(root: Path, spec: DemoSpec, **overrides: object) -> Path:
    """A project folder (cohort, config with relative paths, config/ linked) run with --snakefile."""
    cohort = make_demo_cohort(root / "cohort", spec)
    (root / "config").symlink_to(REPO / "config", target_is_directory=True)
    config = demo_config(Path("."), cohort, folds={"k": 2, "seed": 0, "val_fraction": 0.25},
                         training={"epochs": 2, "patience": 2, "hidden_dim": 32, "grad_accum": 2}, **overrides)
    config = yaml.safe_load(yaml.safe_dump(config).replace(f"{root}/", ""))
    write_config(root / "project.yaml", config)
    return root


def _snakemake_args(*extra: str) -> list[str]:
    return ["--snakefile", str(REPO / "workflow" / "Snakefile"), "--profile", str(REPO / "profiles" / "default"),
            "--cores", "2", "--configfile", "project.yaml", *extra]


def _start(project: Path, log: Path) -> subprocess.Popen:
    handle = open(log, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([str(BIN / "snakemake"), *_snakemake_args()], cwd=project, stdout=handle,
                            stderr=subprocess.STDOUT, env=_env(), start_new_session=True)


def test_a_second_run_on_the_same_results_refuses(tmp_path: Path) -> None:
    # big enough for two folds: they are made when the DAG is built, before the lock is taken
    project = _project(tmp_path, DemoSpec(n_patients=6, n_slides=6, min_side_px=1024, max_side_px=1280, seed=1))
    first = _start(project, tmp_path / "first.log")
    try:
        _wait_for(lambda: any((project / ".snakemake" / "locks").glob("*")), first, "the first run took its lock")
        second = snakemake(*_snakemake_args(), cwd=project, timeout=300)
        text = second.stdout + second.stderr
        assert second.returncode != 0 and "Directory cannot be locked" in text, text[-3000:]
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(timeout=120)


@pytest.mark.slow
def test_kill_9_of_a_run_with_bad_slides_then_rerun(tmp_path: Path) -> None:
    """on_error: skip over bad slides; the run killed during extraction; the rerun redoes no finished slide."""
    project = _project(tmp_path, DemoSpec(n_patients=6, n_slides=8, min_side_px=1536, max_side_px=2048, seed=5),
                       on_error="skip")
    sheet = pd.read_csv(project / "cohort" / "slides.tsv", sep="\t")
    odd = project / "cohort" / "lames d'été"
    odd.mkdir()
    shutil.copy(project / "cohort" / sheet["path"].iloc[0], odd / "lame ü 1.tiff")
    truncated = project / "cohort" / "truncated.svs"
    truncated.write_bytes(shared_file(*CMU).read_bytes()[:100_000])
    patient = sheet["patient_id"].iloc[0]
    bad = {
        "BAD-TRUNCATED": ("truncated.svs", "tile"),
        "BAD-DICOM": (str(shared_file("data", "slides", "broken_dicom_wsi.dcm")), "tile"),
        "BAD-NO-MPP": (str(shared_file("data", "slides", "tcga-cr-7395-01a-01-ts1.svs")), "tile"),
        "BAD-MISSING": ("nowhere/slide.svs", "tile"),
    }
    rows = [{"slide_id": slide, "patient_id": patient, "path": path} for slide, (path, _) in bad.items()]
    rows.append({"slide_id": "UNICODE-1", "patient_id": sheet["patient_id"].iloc[1], "path": "lames d'été/lame ü 1.tiff"})
    pd.concat([sheet, pd.DataFrame(rows)]).to_csv(project / "cohort" / "slides.tsv", sep="\t", index=False)
    results = project / "results"
    features = results / "features" / "efficientnet_lite0"

    first = _start(project, tmp_path / "first.log")
    _wait_for(lambda: len(list(features.glob("*.h5"))) >= 3, first, "three slides' features", timeout=600)
    # jobs whose output was renamed into place but whose end Snakemake had not recorded yet are
    # incomplete to it and rightly redone: count as finished what was there seconds before the kill
    finished = {path.stem for path in features.glob("*.h5")}
    time.sleep(3)
    _wait_for(lambda: len(list(features.glob("*.h5"))) > len(finished), first, "one more slide", timeout=600)
    _kill9(first)

    stale = snakemake(*_snakemake_args(), cwd=project)
    assert stale.returncode != 0 and "--unlock" in stale.stdout + stale.stderr
    assert snakemake(*_snakemake_args("--unlock"), cwd=project).returncode == 0
    rerun = snakemake(*_snakemake_args(), cwd=project, timeout=1800)
    assert rerun.returncode == 0, rerun.stderr[-6000:]
    assert not slides_run(rerun, "extract_features") & finished

    table = read_exclusions(results / "exclusions.tsv").set_index("slide")
    assert set(table.index) == set(bad)
    for slide, (_, stage) in bad.items():
        assert table.loc[slide, "stage"] == stage and table.loc[slide, "reason"] and table.loc[slide, "fix"]
    good = set(sheet["slide_id"]) | {"UNICODE-1"}
    for slide in good:
        with h5py.File(features / f"{slide}.h5") as h5:
            assert not h5.attrs.get("excluded", False) and h5["features"].shape[0] > 0
            assert h5.attrs["encoder"] == "efficientnet_lite0"
    assert (results / "report.html").is_file()
    assert not list(results.rglob(".*.tmp"))

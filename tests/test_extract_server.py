"""Served extraction: `histofuse extract --server true` hands slides to one long-lived process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from histofuse.exclusions import read_exclusion
from histofuse.features.extract import read_features
from histofuse.slides.pyramid import write_pyramidal_tiff

SIDE = 1024
TILE = 128


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    image = np.stack(
        [(np.sin(xx / 29.0) + 1) * 120, (np.cos(yy / 17.0) + 1) * 110, (xx + yy) % 256], axis=-1
    ).astype(np.uint8)
    path = tmp_path_factory.mktemp("served") / "slide.tiff"
    write_pyramidal_tiff(path, image, mpp=0.5, levels=2)
    return path


def _tiles(path: Path) -> Path:
    import h5py

    coords = np.array([[x, y] for y in range(0, SIDE, TILE) for x in range(0, SIDE, TILE)], dtype=np.int64)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("coords", data=coords)
        h5.attrs.update({"slide_id": "slide", "read_level": 0, "read_tile_px": TILE, "tile_px": TILE, "reader": "openslide"})
    return path


def _extract(slide: Path, tiles: Path, out: Path, env: dict[str, str], *, server: bool, on_error: str = "stop",
             idle_s: float = 30.0) -> subprocess.CompletedProcess[str]:  # fmt: skip
    command = [
        sys.executable, "-m", "histofuse.cli", "extract", "--slide", str(slide), "--slide-id", out.stem,
        "--tiles", str(tiles), "--encoder", "efficientnet_lite0", "--device", "cpu", "--batch-size", "16",
        "--on-error", on_error, "--server", str(server).lower(), "--server-idle-s", str(idle_s), "--out", str(out),
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    runtime = tmp_path / "rt"
    return {**os.environ, "HISTOFUSE_RUNTIME_DIR": str(runtime)}


def _server_logs(env: dict[str, str]) -> list[Path]:
    return sorted(Path(env["HISTOFUSE_RUNTIME_DIR"]).glob("*.log"))


def _wait_for_exit(env: dict[str, str], timeout: float = 30.0) -> None:
    """Until the servers under the test's runtime folder have exited (their sockets are gone)."""
    deadline = time.monotonic() + timeout
    while list(Path(env["HISTOFUSE_RUNTIME_DIR"]).glob("*.sock")):
        assert time.monotonic() < deadline, "the idle server did not exit"
        time.sleep(0.5)


@pytest.mark.slow
def test_served_slides_share_one_process_and_equal_unserved(tmp_path: Path, slide: Path, env: dict[str, str]) -> None:
    tiles = _tiles(tmp_path / "tiles.h5")
    first = _extract(slide, tiles, tmp_path / "a.h5", env, server=True, idle_s=3)
    second = _extract(slide, tiles, tmp_path / "b.h5", env, server=True, idle_s=3)
    alone = _extract(slide, tiles, tmp_path / "alone.h5", env, server=False)
    for proc in (first, second, alone):
        assert proc.returncode == 0, proc.stderr
    assert "started extraction server" in first.stderr
    assert "started extraction server" not in second.stderr
    # the server's log lines for the slide reach the job's own log
    assert "tiles encoded with efficientnet_lite0" in second.stderr
    (log,) = _server_logs(env)
    assert log.read_text().count("encoder efficientnet_lite0 built") == 1
    reference, coords, _ = read_features(tmp_path / "alone.h5")
    for name in ("a.h5", "b.h5"):
        features, got_coords, attrs = read_features(tmp_path / name)
        np.testing.assert_array_equal(got_coords, coords)
        np.testing.assert_allclose(features, reference, rtol=0, atol=1e-5)
        assert attrs["region_decoder"] == "tifffile"
    _wait_for_exit(env)
    # after the idle exit the next job starts a new server
    third = _extract(slide, tiles, tmp_path / "c.h5", env, server=True, idle_s=1)
    assert third.returncode == 0, third.stderr
    assert "started extraction server" in third.stderr
    _wait_for_exit(env)


def test_served_bad_slide_is_excluded_under_skip_and_fails_under_stop(tmp_path: Path, env: dict[str, str]) -> None:
    tiles = _tiles(tmp_path / "tiles.h5")
    broken = tmp_path / "broken.tiff"
    broken.write_bytes(b"II*\x00 not a slide")
    skipped = _extract(broken, tiles, tmp_path / "skip.h5", env, server=True, on_error="skip", idle_s=2)
    assert skipped.returncode == 0, skipped.stderr
    exclusion = read_exclusion(tmp_path / "skip.h5")
    assert exclusion is not None and exclusion.stage == "extract_features"
    stopped = _extract(broken, tiles, tmp_path / "stop.h5", env, server=True, on_error="stop", idle_s=2)
    assert stopped.returncode == 2
    assert str(broken) in stopped.stderr and "Fix:" in stopped.stderr
    assert not (tmp_path / "stop.h5").exists()
    _wait_for_exit(env)


def test_server_that_cannot_start_is_reported(tmp_path: Path, slide: Path, env: dict[str, str]) -> None:
    tiles = _tiles(tmp_path / "tiles.h5")
    command = [
        sys.executable, "-m", "histofuse.cli", "extract", "--slide", str(slide), "--tiles", str(tiles),
        "--encoder", "no_such_encoder", "--device", "cpu", "--server", "true", "--out", str(tmp_path / "x.h5"),
    ]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    assert "extraction server exited while starting" in proc.stderr and "no_such_encoder" in proc.stderr


@pytest.mark.slow
def test_dag_with_a_server_reruns_only_changed_or_deleted_slides(tmp_path: Path) -> None:
    """The DAG's jobs hand their slides to one server; per-slide reruns work as without it."""
    import pandas as pd

    from histofuse.demo import DemoSpec
    from workflow_support import REPO, demo_config, make_cohort, slides_run, snakemake, write_config

    cohort = make_cohort(tmp_path, DemoSpec(n_patients=3, n_slides=3, min_side_px=1024, max_side_px=1024, seed=2))
    config = demo_config(tmp_path, cohort, features={"batch_size": 32, "server": True, "server_idle_s": 120})
    config_path = write_config(tmp_path / "config.yaml", config)
    slides = sorted(pd.read_csv(cohort["slides_sheet"], sep="\t")["slide_id"])
    results = tmp_path / "results"
    targets = [str(results / "features" / "efficientnet_lite0" / f"{slide}.h5") for slide in slides]
    runtime = tmp_path / "rt"
    env = {**os.environ, "HISTOFUSE_RUNTIME_DIR": str(runtime)}

    def run() -> set[str]:
        proc = snakemake(*targets, "--profile", str(REPO / "profiles" / "default"), "--cores", "2",
                         "--configfile", str(config_path), env=env)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
        return slides_run(proc, "extract_features")

    try:
        assert run() == set(slides)
        for slide in slides:
            log = (results / "logs" / "extract_features" / "efficientnet_lite0" / f"{slide}.log").read_text()
            assert "tiles encoded with efficientnet_lite0" in log  # the server's lines reach each job's log
        Path(targets[0]).unlink()  # a deleted features file is rebuilt, and only it
        assert run() == {slides[0]}
        sheet = pd.read_csv(cohort["slides_sheet"], sep="\t").set_index("slide_id")
        rescanned = cohort["slides_sheet"].parent / sheet.loc[slides[1], "path"]
        with rescanned.open("ab") as handle:  # a changed slide (new bytes, newer) redoes that slide only
            handle.write(b"\0" * 64)
        assert run() == {slides[1]}
        assert run() == set()
        (log,) = sorted(runtime.glob("*.log"))
        assert log.read_text().count("encoder efficientnet_lite0 built") == 1  # one start-up for every job
    finally:
        for sock in runtime.glob("*.sock"):
            sock.unlink()


def test_served_jobs_send_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server started from one folder serves jobs started from another: no path may stay relative."""
    from histofuse.features.extract_job import EncoderSpec, ExtractJob
    from histofuse.features.server import absolute_paths

    monkeypatch.chdir(tmp_path)
    job = ExtractJob(slide="s/a.svs", slide_id="a", tiles="results/tiles/a.h5", out="results/f/a.h5", mpp=None,
                     on_error="stop")  # fmt: skip
    spec = EncoderSpec(encoder="resnet50_trunc", weights="w/r50.pt", threads=1,
                       settings={"stain_target": "t.png", "device": "cpu"})  # fmt: skip
    job, spec = absolute_paths(job, spec)
    assert job.slide == str(tmp_path / "s/a.svs") and job.tiles == str(tmp_path / "results/tiles/a.h5")
    assert job.out == str(tmp_path / "results/f/a.h5")
    assert spec.weights == str(tmp_path / "w/r50.pt") and spec.settings["stain_target"] == str(tmp_path / "t.png")
    _, plain = absolute_paths(job, EncoderSpec(encoder="x", weights=None, threads=1, settings={"stain_target": None}))
    assert plain.weights is None and plain.settings["stain_target"] is None

"""Importing precomputed CLAM / TRIDENT features, and a workflow that skips masks, tiles and extraction."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from conftest import REPO
from histofuse.cli import main
from histofuse.errors import SlideError
from histofuse.features.encoders import sha256_file
from histofuse.features.extract import check_features_encoder, read_features
from histofuse.features.precomputed import (
    candidate_paths,
    find_precomputed_features,
    import_precomputed_features,
)

ENCODER = "uni_v1"


def _write(path: Path, *, n: int = 6, dim: int = 8, seed: int = 0, **override: np.ndarray) -> Path:
    """A CLAM/TRIDENT-style features file: features (n, dim), coords (n, 2) with their attributes."""
    rng = np.random.default_rng(seed)
    data = {
        "features": rng.normal(size=(n, dim)).astype(np.float32),
        "coords": (rng.integers(0, 50, size=(n, 2)) * 256).astype(np.int64),
    }
    data.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        for name, array in data.items():
            if array is not None:
                h5.create_dataset(name, data=array)
        if "coords" in h5:
            h5["coords"].attrs["patch_size"] = 256
            h5["coords"].attrs["patch_size_level0"] = 512
            h5["coords"].attrs["target_magnification"] = 20
        h5.attrs["encoder"] = "conch_v15"
    return path


@pytest.mark.parametrize(
    "relative",
    ["S1.h5", "h5_files/S1.h5", f"features_{ENCODER}/S1.h5"],
    ids=["flat", "clam", "trident"],
)
def test_import_writes_our_layout(tmp_path: Path, relative: str) -> None:
    folder = tmp_path / "precomputed"
    source = _write(folder / relative)
    out = tmp_path / "features" / ENCODER / "S1.h5"
    assert import_precomputed_features(folder=folder, slide_id="S1", encoder=ENCODER, out_h5=out) == 6
    features, coords, attrs = read_features(out)
    with h5py.File(source) as h5:
        np.testing.assert_array_equal(features, h5["features"][()])
        np.testing.assert_array_equal(coords, h5["coords"][()])
    assert attrs["source"] == "precomputed"
    assert attrs["source_path"] == str(source.resolve())
    assert attrs["source_sha256"] == sha256_file(source)
    assert attrs["source_layout"] == {"S1.h5": "flat", "h5_files/S1.h5": "clam"}.get(relative, "trident")
    assert (attrs["encoder"], attrs["dim"], attrs["n_tiles"], attrs["slide_id"]) == (ENCODER, 8, 6, "S1")
    assert attrs["source_encoder"] == "conch_v15"
    assert attrs["tile_px"] == 256 and attrs["tile_px_level0"] == 512
    with h5py.File(out) as h5:
        assert h5["features"].dtype == np.float32 and h5["coords"].dtype == np.int64
        assert h5["coords"].attrs["target_magnification"] == 20
    check_features_encoder(out, ENCODER)  # what training checks


def test_missing_file_names_slide_folder_and_names_tried(tmp_path: Path) -> None:
    folder = tmp_path / "precomputed"
    folder.mkdir()
    with pytest.raises(SlideError) as err:
        find_precomputed_features(folder, "S9", ENCODER)
    message = str(err.value)
    assert "'S9'" in message and str(folder) in message
    for name in ("S9.h5", "h5_files/S9.h5", f"features_{ENCODER}/S9.h5"):
        assert name in message
    assert len(candidate_paths(folder, "S9", ENCODER)) == 3


def test_two_candidates_are_ambiguous(tmp_path: Path) -> None:
    folder = tmp_path / "precomputed"
    _write(folder / "S1.h5")
    _write(folder / "h5_files" / "S1.h5")
    with pytest.raises(SlideError, match="several precomputed feature files"):
        find_precomputed_features(folder, "S1", ENCODER)


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"features": None}, "no 'features'"),
        ({"coords": np.zeros((5, 2), dtype=np.int64)}, "6 rows but 'coords' has 5"),
        ({"features": np.full((6, 8), np.nan, dtype=np.float32)}, "non-finite"),
        ({"coords": np.zeros((6, 3), dtype=np.int64)}, "2 columns"),
        ({"coords": np.zeros(6, dtype=np.int64)}, "2 columns"),
        ({"features": np.zeros(6, dtype=np.float32)}, "must be 2-D"),
        ({"coords": np.full((6, 2), 0.5)}, "whole-pixel"),
    ],
)
def test_invalid_files_are_slide_errors_naming_the_file(tmp_path: Path, override: dict, problem: str) -> None:
    folder = tmp_path / "precomputed"
    source = _write(folder / "S1.h5", **override)
    out = tmp_path / "out.h5"
    with pytest.raises(SlideError, match=problem) as err:
        import_precomputed_features(folder=folder, slide_id="S1", encoder=ENCODER, out_h5=out)
    assert str(source) in str(err.value) and "Fix:" in str(err.value)
    assert not out.exists()


def test_import_command(tmp_path: Path) -> None:
    folder = tmp_path / "precomputed"
    _write(folder / "h5_files" / "S1.h5")
    args = ["import-features", "--folder", str(folder), "--encoder", ENCODER]
    assert main([*args, "--slide-id", "S1", "--out", str(tmp_path / "S1.h5")]) == 0
    assert main([*args, "--slide-id", "S2", "--out", str(tmp_path / "S2.h5")]) == 2
    assert not (tmp_path / "S2.h5").exists()


def test_workflow_with_precomputed_features_runs_no_slide_stages(tmp_path: Path) -> None:
    """A dry run on an 8-slide cohort: import_features replaces tile and extract_features.

    The cohort is big enough for its two folds: they are made when the DAG is built."""
    from workflow_support import snakemake

    (tmp_path / "slides.tsv").write_text(
        "slide_id\tpatient_id\tpath\n" + "".join(f"S{i}\tP{i}\tS{i}.svs\n" for i in range(8))
    )
    (tmp_path / "patients.tsv").write_text(
        "patient_id\tgrade\tsurvival_months\tevent\n" + "".join(f"P{i}\t{2 + i % 3}\t{10 * (i + 1)}\t{int(i % 4 != 3)}\n" for i in range(8))
    )
    folder = tmp_path / "trident_job"
    for i in range(8):
        _write(folder / f"features_{ENCODER}" / f"S{i}.h5", seed=i)
    config = {
        "results": str(tmp_path / "results"),
        "samples": {"slides": str(tmp_path / "slides.tsv"), "patients": str(tmp_path / "patients.tsv")},
        "tables": {"genomics": None, "gene_groups": None, "clinical": None},
        "folds": {"k": 2},
        "features": {"source": "precomputed", "precomputed_dir": str(folder), "encoder": ENCODER},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    proc = snakemake("-n", "-q", "rules", "--cores", "1", "--configfile", str(config_path), cwd=REPO, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "import_features" in text and "train" in text
    for rule in ("tile", "extract_features"):
        assert f"\n{rule} " not in text and f" {rule}\n" not in text and f"rule {rule}:" not in text, rule

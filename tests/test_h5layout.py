"""The tiles and features HDF5 layout: what the writers put in a file, and what the readers give back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import histofuse
from histofuse import h5layout

COORDS = np.array([[0, 0], [512, 0], [0, 512]], dtype=np.int64)
TISSUE = np.array([0.5, 0.75, 1.0], dtype=np.float32)
GEOMETRY: dict[str, Any] = {
    "read_level": 1,
    "read_tile_px": 256,
    "tile_px": 256,
    "tile_px_level0": 512,
    "target_mpp": 0.5,
}
CLAM: dict[str, Any] = {"patch_size": 256, "patch_level": 1, "downsample": np.array([2.0, 2.0]), "name": "S1"}
RECORD = {"stage": "tiling", "file": "/data/S1.svs", "reason": "cannot open the slide.", "fix": "replace the file."}


def _dump(path: Path) -> dict[str, Any]:
    """Every dataset (dtype, values, attributes) and file attribute, comparable with ``==`` via repr."""

    def attrs(obj: h5py.File | h5py.Dataset) -> dict[str, str]:
        return {
            key: repr(np.asarray(value).tolist()) + str(np.asarray(value).dtype) for key, value in obj.attrs.items()
        }

    with h5py.File(path, "r") as h5:
        datasets = {name: (str(h5[name].dtype), h5[name][()].tolist(), attrs(h5[name])) for name in h5}
        return {"datasets": datasets, "attrs": attrs(h5)}


def _old_tiles_writer(path: Path) -> None:
    """The tiles file as ``slides.tiling.write_tiles_h5`` wrote it before the layout had a module."""
    with h5py.File(path, "w") as h5:
        h5.create_dataset("coords", data=COORDS, dtype="int64")
        h5.create_dataset("tissue_fraction", data=TISSUE, dtype="float32")
        for key, value in GEOMETRY.items():
            h5.attrs[key] = value
        for key, value in CLAM.items():
            h5["coords"].attrs[key] = value
        h5.attrs["slide_id"] = "S1"
        h5.attrs["reader"] = "openslide"
        h5.attrs["n_tiles"] = 3
        h5.attrs["histofuse_version"] = histofuse.__version__


def _write_tiles(path: Path) -> Path:
    h5layout.write_tiles(
        path, coords=COORDS, tissue=TISSUE, attrs=GEOMETRY, coords_attrs=CLAM, slide_id="S1", reader="openslide"
    )
    return path


def test_tiles_file_has_the_layout_tiling_always_wrote(tmp_path: Path) -> None:
    new = _write_tiles(tmp_path / "new.h5")
    _old_tiles_writer(tmp_path / "old.h5")
    assert _dump(new) == _dump(tmp_path / "old.h5")
    with h5py.File(new, "r") as h5:
        assert sorted(h5) == ["coords", "tissue_fraction"]
        assert h5["coords"].dtype == np.int64 and h5["tissue_fraction"].dtype == np.float32
        assert h5["coords"].attrs["patch_size"] == 256
        assert h5.attrs["n_tiles"] == 3 and h5.attrs["slide_id"] == "S1"


def test_read_tiles_gives_plain_values_and_copied_datasets(tmp_path: Path) -> None:
    tiles = h5layout.read_tiles(_write_tiles(tmp_path / "S1.h5"))
    np.testing.assert_array_equal(tiles.coords, COORDS)
    assert tiles.attrs["reader"] == "openslide" and isinstance(tiles.attrs["read_level"], int)
    assert tiles.coords_attrs["name"] == "S1"
    np.testing.assert_array_equal(tiles.extra["tissue_fraction"], TISSUE)
    assert h5layout.read_tile_count(tmp_path / "S1.h5")[0] == 3
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(KeyError):
        h5layout.read_tiles(tmp_path / "empty.h5")


def test_features_writer_fills_a_features_file(tmp_path: Path) -> None:
    tiles = h5layout.read_tiles(_write_tiles(tmp_path / "tiles.h5"))
    attrs = h5layout.extraction_attrs(
        tiles.attrs,
        encoder="enc",
        dim=4,
        input_px=224,
        weights_sha256="abc",
        weights_path="/w.pt",
        precision="fp32",
        device="cpu",
        n_tiles=3,
        stain_norm=None,
        stain_target=None,
        tile_resize="none",
        region_decoder="openslide",
    )
    out = tmp_path / "features.h5"
    with h5layout.features_writer(
        out, n_tiles=3, dim=4, coords=tiles.coords, coords_attrs=tiles.coords_attrs, extra=tiles.extra, attrs=attrs
    ) as features:
        features[[0, 1, 2]] = np.arange(12, dtype=np.float32).reshape(3, 4)[::-1]
    with h5py.File(out, "r") as h5:
        assert sorted(h5) == ["coords", "features", "tissue_fraction"]
        assert h5["features"].dtype == np.float32 and h5["coords"].attrs["patch_size"] == 256
    values, coords, read = h5layout.read_features(out)
    np.testing.assert_array_equal(values[2], [0, 1, 2, 3])
    np.testing.assert_array_equal(coords, COORDS)
    assert read["tiles_histofuse_version"] == histofuse.__version__
    assert (read["encoder"], read["dim"], read["source"], read["stain_norm"]) == ("enc", 4, "extracted", "none")
    assert "stain_target" not in read and read["region_decoder"] == "openslide" and read["target_mpp"] == 0.5
    assert h5layout.read_feature_attrs(out, "encoder", "weights_sha256", "absent") == {
        "encoder": "enc",
        "weights_sha256": "abc",
        "absent": None,
    }
    shape = h5layout.read_features_shape(out)
    assert (shape.excluded, shape.shape, shape.has_coords, shape.encoder) == (False, (3, 4), True, "enc")
    block, xy, every = h5layout.read_feature_rows(out, np.array([0, 2]), with_coords=True)
    np.testing.assert_array_equal(block[1], [0, 1, 2, 3])
    assert xy is not None and every is not None and xy.tolist() == [[0, 0], [0, 512]] and len(every) == 3
    assert h5layout.read_feature_rows(out, None, with_coords=False)[1:] == (None, None)


def test_whole_features_file_round_trips_and_names_missing_datasets(tmp_path: Path) -> None:
    out = tmp_path / "imported.h5"
    features = np.ones((3, 2), dtype=np.float64)
    h5layout.write_features(out, features=features, coords=COORDS, coords_attrs=CLAM, attrs={"encoder": "enc"})
    stored = h5layout.read_features_file(out)
    assert stored.features.dtype == np.float32 and stored.coords_attrs["patch_level"] == 1
    assert stored.attrs == {"encoder": "enc"}
    with h5py.File(tmp_path / "coords_only.h5", "w") as h5:
        h5.create_dataset("coords", data=COORDS)
    with pytest.raises(KeyError) as missing:
        h5layout.read_features_file(tmp_path / "coords_only.h5")
    assert missing.value.args == ("features",)


def test_exclusion_flag_round_trips_as_before(tmp_path: Path) -> None:
    tiles, features = tmp_path / "tiles.h5", tmp_path / "features.h5"
    h5layout.write_excluded_tiles(tiles, slide="S1", record=RECORD)
    h5layout.write_excluded_features(features, slide="S1", record=RECORD, encoder="enc")
    old = tmp_path / "old.h5"
    with h5py.File(old, "w") as h5:  # as exclusions.write_excluded_features wrote it
        h5.create_dataset("features", data=np.zeros((0, 0), dtype=np.float32))
        h5.create_dataset("coords", data=np.zeros((0, 2), dtype=np.int64))
        h5.attrs["encoder"] = "enc"
        h5.attrs["dim"] = 0
        h5.attrs["excluded"] = True
        h5.attrs["slide_id"] = "S1"
        for name in ("stage", "file", "reason", "fix"):
            h5.attrs["exclusion_" + name] = RECORD[name]
        h5.attrs["n_tiles"] = 0
        h5.attrs["histofuse_version"] = histofuse.__version__
    assert _dump(features) == _dump(old)
    for path in (tiles, features):
        assert h5layout.read_exclusion_record(path) == ("S1", RECORD)
    assert h5layout.read_features_shape(features).excluded
    assert h5layout.read_exclusion_record(_write_tiles(tmp_path / "kept.h5")) is None

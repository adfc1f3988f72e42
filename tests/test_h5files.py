"""The tiles and features HDF5 layout, read and written in one module."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from histofuse import h5files


def test_tiles_features_and_exclusion_round_trip(tmp_path: Path) -> None:
    coords = np.array([[0, 0], [256, 0], [0, 256]], dtype=np.int64)
    tiles = tmp_path / "tiles.h5"
    h5files.write_tiles(
        tiles,
        coords=coords,
        tissue_fraction=np.array([1.0, 0.5, 0.25], dtype=np.float32),
        attrs={"slide_id": "S1", "tile_px": 256, "target_mpp": 0.5},
        coords_attrs={"patch_size": 256, "patch_level": 0},
    )
    with h5py.File(tiles) as h5:  # CLAM / TRIDENT's dataset names, our attributes
        assert set(h5) == {"coords", "tissue_fraction"} and h5["coords"].attrs["patch_size"] == 256
        assert h5.attrs["n_tiles"] == 3 and isinstance(h5.attrs["histofuse_version"], str)
    read, attrs = h5files.read_tiles(tiles)
    assert np.array_equal(read, coords) and attrs["slide_id"] == "S1" and attrs["target_mpp"] == 0.5

    features = tmp_path / "features.h5"
    values = np.arange(6, dtype=np.float32).reshape(3, 2)
    h5files.write_features(features, features=values, coords=coords, coords_attrs={"patch_size": 256}, attrs={"encoder": b"enc"})
    got, got_coords, got_attrs = h5files.read_features_file(features)
    assert np.array_equal(got, values) and np.array_equal(got_coords, coords) and got_attrs["encoder"] == "enc"
    shape, has_coords, _ = h5files.features_shape(features)  # type: ignore[misc]
    assert shape == (3, 2) and has_coords
    block, xy, all_xy = h5files.read_feature_rows(features, np.array([0, 2]), with_coords=True)
    assert np.array_equal(block, values[[0, 2]]) and np.array_equal(xy, coords[[0, 2]]) and np.array_equal(all_xy, coords)
    assert h5files.read_exclusion_record(features) is None

    excluded = tmp_path / "excluded.h5"
    record = {"stage": "tile", "file": "s.tiff", "reason": "no tissue", "fix": "check the mask"}
    h5files.write_excluded(excluded, kind="features", record=record, slide_id="S2", encoder="enc")
    assert h5files.read_exclusion_record(excluded) == {**record, "slide_id": "S2"}
    assert h5files.features_shape(excluded) is None
    with h5py.File(excluded) as h5:
        assert h5["features"].shape == (0, 0) and h5.attrs["exclusion_reason"] == "no tissue"


def test_a_foreign_file_without_features_names_what_it_lacks(tmp_path: Path) -> None:
    path = tmp_path / "clam.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("coords", data=np.zeros((1, 2)))
    assert h5files.read_foreign_features(path) == ["features"]
    with pytest.raises(KeyError):
        h5files.features_shape(path)

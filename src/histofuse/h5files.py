"""The tiles and features HDF5 files: their layout, and the readers and writers every stage uses.

A **tiles file** (``tiles/{slide}.h5``) holds ``coords`` (N × 2 int64, level-0 top-left corners;
its attributes carry CLAM / TRIDENT's names: ``patch_size``, ``patch_level``…) and
``tissue_fraction`` (N float32), with the tiling settings, ``slide_id``, ``reader``, ``n_tiles`` and
``histofuse_version`` as file attributes.

A **features file** (``features/{encoder}/{slide}.h5``) holds ``features`` (N × D float32) and the
tiles' ``coords`` (same rows, same attributes), so CLAM and TRIDENT read it as their own; its
attributes describe the encoder (``encoder``, ``dim``, ``precision``, ``weights_sha256``…) beside the
tiling's.

A slide excluded under ``on_error: skip`` gets the same file with no rows and the attributes
``excluded`` plus ``exclusion_stage`` / ``exclusion_file`` / ``exclusion_reason`` / ``exclusion_fix``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from histofuse import __version__
from histofuse.io import atomic_path

COORDS = "coords"
FEATURES = "features"
TISSUE_FRACTION = "tissue_fraction"
EXCLUDED = "excluded"
EXCLUSION_PREFIX = "exclusion_"
EXCLUSION_FIELDS: tuple[str, ...] = ("stage", "file", "reason", "fix")
CLAM_TILE_SIZES: tuple[tuple[str, str], ...] = (("tile_px", "patch_size"), ("tile_px_level0", "patch_size_level0"))
"""Our tile-size attribute and CLAM / TRIDENT's name for it on ``coords``."""


def plain(value: Any) -> Any:
    """An attribute as a Python value: numpy scalars → Python scalars, bytes → str; arrays are kept."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def plain_attrs(attrs: h5py.AttributeManager) -> dict[str, Any]:
    return {key: plain(value) for key, value in attrs.items()}


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The file attributes of a tiles or features file, as Python values."""
    with h5py.File(path, "r") as h5:
        return plain_attrs(h5.attrs)


def is_excluded(attrs: Mapping[str, Any]) -> bool:
    """Whether a file's attributes carry an exclusion record."""
    return bool(attrs.get(EXCLUDED, False))


def set_attrs(target: h5py.File | h5py.Dataset, attrs: Mapping[str, Any]) -> None:
    for key, value in attrs.items():
        target.attrs[key] = value


@contextmanager
def writing(path: str | Path) -> Iterator[h5py.File]:
    """A new HDF5 file at ``path``, written atomically (a temporary file renamed when complete)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        yield h5


def write_tiles(
    path: str | Path,
    *,
    coords: np.ndarray,
    tissue_fraction: np.ndarray,
    attrs: Mapping[str, Any],
    coords_attrs: Mapping[str, Any],
) -> None:
    """A tiles file: ``coords`` and ``tissue_fraction``, the file and ``coords`` attributes."""
    with writing(path) as h5:
        h5.create_dataset(COORDS, data=coords, dtype="int64")
        h5.create_dataset(TISSUE_FRACTION, data=tissue_fraction, dtype="float32")
        set_attrs(h5, attrs)
        set_attrs(h5[COORDS], coords_attrs)
        h5.attrs["n_tiles"] = int(coords.shape[0])
        h5.attrs["histofuse_version"] = __version__


def read_tiles(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Coordinates and file attributes of a tiles file."""
    with h5py.File(path, "r") as h5:
        return h5[COORDS][()], plain_attrs(h5.attrs)


def read_tiles_full(path: str | Path, copied: tuple[str, ...]) -> tuple[np.ndarray, dict[str, Any], dict[str, Any], dict[str, np.ndarray]]:
    """Coordinates (N × 2 int64), file and ``coords`` attributes, and the datasets named in ``copied``.

    Raises ``KeyError`` naming ``coords`` when the file has none.
    """
    with h5py.File(path, "r") as h5:
        if COORDS not in h5:
            raise KeyError(COORDS)
        coords = np.asarray(h5[COORDS][()], dtype=np.int64).reshape(-1, 2)
        extra = {name: h5[name][()] for name in copied if name in h5}
        return coords, plain_attrs(h5.attrs), plain_attrs(h5[COORDS].attrs), extra


def create_features(
    h5: h5py.File,
    *,
    n_tiles: int,
    dim: int,
    coords: np.ndarray,
    coords_attrs: Mapping[str, Any],
    extra: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
) -> h5py.Dataset:
    """The datasets and attributes of a features file; returns the (empty) ``features`` to fill."""
    features = h5.create_dataset(FEATURES, shape=(n_tiles, dim), dtype="float32")
    h5.create_dataset(COORDS, data=coords, dtype="int64")
    set_attrs(h5[COORDS], coords_attrs)
    for name, data in extra.items():
        h5.create_dataset(name, data=data)
    set_attrs(h5, attrs)
    return features


def write_features(
    path: str | Path, *, features: np.ndarray, coords: np.ndarray, coords_attrs: Mapping[str, Any], attrs: Mapping[str, Any]
) -> None:
    """A complete features file in one write (imported features)."""
    with writing(path) as h5:
        h5.create_dataset(FEATURES, data=features, dtype="float32")
        h5.create_dataset(COORDS, data=coords, dtype="int64")
        set_attrs(h5[COORDS], coords_attrs)
        set_attrs(h5, attrs)


def read_features_file(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``features`` (float32), ``coords`` (int64) and the file attributes; ``KeyError`` when one is absent."""
    with h5py.File(path, "r") as h5:
        features = np.asarray(h5[FEATURES][()], dtype=np.float32)
        coords = np.asarray(h5[COORDS][()], dtype=np.int64)
        return features, coords, plain_attrs(h5.attrs)


def read_foreign_features(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any]] | list[str]:
    """A CLAM / TRIDENT features file as stored (no dtype change): features, coords, file and
    ``coords`` attributes; or the names of the datasets it lacks."""
    with h5py.File(path, "r") as h5:
        missing = [name for name in (FEATURES, COORDS) if name not in h5]
        if missing:
            return missing
        return np.asarray(h5[FEATURES][()]), np.asarray(h5[COORDS][()]), plain_attrs(h5.attrs), plain_attrs(h5[COORDS].attrs)


def features_shape(path: str | Path) -> tuple[tuple[int, ...], bool, dict[str, Any]] | None:
    """``features``' shape, whether ``coords`` has one row per tile, and the file attributes, without
    reading the features; ``None`` for an excluded slide. ``KeyError`` when ``features`` is absent."""
    with h5py.File(path, "r") as h5:
        attrs = plain_attrs(h5.attrs)
        if is_excluded(attrs):
            return None
        if FEATURES not in h5:
            raise KeyError(FEATURES)
        shape = tuple(h5[FEATURES].shape)
        has_coords = COORDS in h5 and h5[COORDS].shape == (shape[0], 2)
        return shape, has_coords, attrs


def read_feature_rows(
    path: str | Path, rows: np.ndarray | None, *, with_coords: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The ``features`` of ``rows`` (None: all), their ``coords`` and, for a subset, all ``coords``."""
    with h5py.File(path, "r") as h5:
        selection: Any = () if rows is None else rows
        block = np.asarray(h5[FEATURES][selection], dtype=np.float32)
        if not with_coords:
            return block, None, None
        xy = np.asarray(h5[COORDS][selection], dtype=np.int64)
        all_xy = None if rows is None else np.asarray(h5[COORDS][()], dtype=np.int64)
        return block, xy, all_xy


def write_excluded(path: str | Path, *, kind: str, record: Mapping[str, str], slide_id: str, encoder: str | None = None) -> None:
    """A tiles (``kind="tiles"``) or features file with no rows that carries an exclusion record."""
    with writing(path) as h5:
        if kind == "features":
            h5.create_dataset(FEATURES, data=np.zeros((0, 0), dtype=np.float32))
            h5.create_dataset(COORDS, data=np.zeros((0, 2), dtype=np.int64))
            h5.attrs["encoder"] = encoder
            h5.attrs["dim"] = 0
        else:
            h5.create_dataset(COORDS, data=np.zeros((0, 2), dtype=np.int64))
            h5.create_dataset(TISSUE_FRACTION, data=np.zeros((0,), dtype=np.float32))
        h5.attrs[EXCLUDED] = True
        h5.attrs["slide_id"] = slide_id
        for name in EXCLUSION_FIELDS:
            h5.attrs[EXCLUSION_PREFIX + name] = record[name]
        h5.attrs["n_tiles"] = 0
        h5.attrs["histofuse_version"] = __version__


def read_exclusion_record(path: str | Path) -> dict[str, str] | None:
    """The exclusion record (stage, file, reason, fix and slide_id) of a file; ``None`` if processed."""
    attrs = read_attrs(path)
    if not is_excluded(attrs):
        return None
    record = {name: str(attrs.get(EXCLUSION_PREFIX + name, "")) for name in EXCLUSION_FIELDS}
    record["slide_id"] = str(attrs.get("slide_id", ""))
    return record

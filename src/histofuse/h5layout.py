"""The tiles and features HDF5 files: their layout, and every read and write of them.

A **tiles file** (``tiles/<slide>.h5``) holds :data:`COORDS` (N × 2 int64, level-0 x, y) and
:data:`TISSUE_FRACTION` (N float32), the grid's geometry as file attributes, and on ``coords`` the
attribute names CLAM and TRIDENT read (:data:`CLAM_COORDS_ATTRS`).

A **features file** (``features/<encoder>/<slide>.h5``) holds :data:`FEATURES` (N × dim float32)
and :data:`COORDS` as in CLAM / TRIDENT, the tiles file's attributes and datasets copied over, and
the encoder's identity (:data:`ENCODER`, :data:`DIM`, :data:`WEIGHTS_SHA256`…).

Either file may instead carry an **exclusion** (:data:`EXCLUDED` set, no tiles, the record in the
attributes ``exclusion_<field>``): see :mod:`histofuse.exclusions`.

Nothing outside this module names an HDF5 dataset or attribute.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from histofuse import __version__
from histofuse.io import atomic_path

# ------------------------------------------------------------------------------------ datasets
FEATURES = "features"
COORDS = "coords"
TISSUE_FRACTION = "tissue_fraction"
COPIED_TILE_DATASETS: tuple[str, ...] = (TISSUE_FRACTION,)
"""Datasets of a tiles file that extraction copies into the features file."""

# ---------------------------------------------------------------------------------- attributes
SLIDE_ID = "slide_id"
N_TILES = "n_tiles"
VERSION = "histofuse_version"
READER = "reader"
TILE_PX = "tile_px"
TILE_PX_LEVEL0 = "tile_px_level0"
TARGET_MPP = "target_mpp"
READ_LEVEL = "read_level"
READ_TILE_PX = "read_tile_px"
REQUIRED_TILE_ATTRS: tuple[str, ...] = (READ_LEVEL, READ_TILE_PX, TILE_PX)
"""Attributes of a tiles file without which its tiles cannot be read."""
ENCODER = "encoder"
DIM = "dim"
PRECISION = "precision"
WEIGHTS_SHA256 = "weights_sha256"

# ------------------------------------------------------------------------------------ exclusion
EXCLUDED = "excluded"
EXCLUSION_PREFIX = "exclusion_"
EXCLUSION_FIELDS: tuple[str, ...] = ("stage", "file", "reason", "fix")
"""Fields of an exclusion record, stored as ``exclusion_<field>`` attributes."""

# ------------------------------------------------------------------------ CLAM / TRIDENT names
CLAM_PATCH_SIZE = "patch_size"
CLAM_PATCH_SIZE_LEVEL0 = "patch_size_level0"
FROM_CLAM_COORDS_ATTRS: tuple[tuple[str, str], ...] = (
    (TILE_PX, CLAM_PATCH_SIZE),
    (TILE_PX_LEVEL0, CLAM_PATCH_SIZE_LEVEL0),
)
"""(our file attribute, CLAM/TRIDENT ``coords`` attribute) pairs filled in on import when missing."""
SOURCE = "source"
SOURCE_ENCODER = "source_encoder"
SOURCE_LAYOUT = "source_layout"
SOURCE_PATH = "source_path"
SOURCE_SHA256 = "source_sha256"
PRECOMPUTED_OWN_ATTRS: tuple[str, ...] = (ENCODER, DIM, N_TILES, SLIDE_ID, SOURCE, SOURCE_PATH, SOURCE_SHA256, VERSION)
"""Attributes an import writes itself, never copied from the source file."""


def clam_coords_attrs(attrs: dict[str, Any], *, slide_id: str, save_path: str | Path) -> dict[str, Any]:
    """CLAM / TRIDENT attributes of a tiles file's ``coords`` dataset, from the grid's geometry ``attrs``.

    ``patch_size`` is the tile side at the target resolution (TRIDENT's meaning).
    """
    downsample = float(attrs["read_downsample"])
    level_dim = np.array([attrs["read_level_width"], attrs["read_level_height"]], dtype=np.int64)
    out: dict[str, Any] = {
        CLAM_PATCH_SIZE: int(attrs[TILE_PX]),
        "patch_level": int(attrs[READ_LEVEL]),
        CLAM_PATCH_SIZE_LEVEL0: int(attrs[TILE_PX_LEVEL0]),
        "downsample": np.array([downsample, downsample], dtype=np.float64),
        "level_dim": level_dim,
        "downsampled_level_dim": level_dim.copy(),
        "overlap": int(attrs["overlap_px"]),
        "name": str(slide_id),
        "save_path": str(save_path),
    }
    for key in ("level0_magnification", "target_magnification"):
        if key in attrs:
            out[key] = float(attrs[key])
    return out


def plain(value: Any, *, errors: str = "strict") -> Any:
    """numpy scalars → Python scalars, bytes → str; arrays are kept."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors=errors)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _plain_attrs(attrs: h5py.AttributeManager, *, errors: str = "strict") -> dict[str, Any]:
    return {key: plain(value, errors=errors) for key, value in attrs.items()}


def _set_attrs(target: h5py.File | h5py.Dataset, attrs: Mapping[str, Any]) -> None:
    for key, value in attrs.items():
        target.attrs[key] = value


# ---------------------------------------------------------------------------------------- tiles


@dataclass(frozen=True, kw_only=True)
class TilesFile:
    """What a tiles file holds: coordinates, file and ``coords`` attributes, copied datasets."""

    coords: npt.NDArray[np.int64]
    attrs: dict[str, Any]
    coords_attrs: dict[str, Any]
    extra: dict[str, np.ndarray]


def write_tiles(
    path: str | Path,
    *,
    coords: np.ndarray,
    tissue: np.ndarray,
    attrs: Mapping[str, Any],
    coords_attrs: Mapping[str, Any],
    slide_id: str,
    reader: str,
) -> None:
    """Write a tiles file atomically (geometry ``attrs``, CLAM/TRIDENT ``coords_attrs``)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset(COORDS, data=coords, dtype="int64")
        h5.create_dataset(TISSUE_FRACTION, data=tissue, dtype="float32")
        _set_attrs(h5, attrs)
        _set_attrs(h5[COORDS], coords_attrs)
        h5.attrs[SLIDE_ID] = slide_id
        h5.attrs[READER] = reader
        h5.attrs[N_TILES] = int(coords.shape[0])
        h5.attrs[VERSION] = __version__


def read_tiles(path: str | Path) -> TilesFile:
    """Everything in a tiles file; :class:`KeyError` when it has no ``coords``, :class:`OSError` when unreadable."""
    with h5py.File(path, "r") as h5:
        if COORDS not in h5:
            raise KeyError(COORDS)
        return TilesFile(
            coords=np.asarray(h5[COORDS][()], dtype=np.int64).reshape(-1, 2),
            attrs=_plain_attrs(h5.attrs),
            coords_attrs=_plain_attrs(h5[COORDS].attrs),
            extra={name: h5[name][()] for name in COPIED_TILE_DATASETS if name in h5},
        )


def read_tile_count(path: str | Path) -> tuple[int, dict[str, Any]]:
    """Number of tiles (rows of ``coords``) and raw file attributes, without reading coordinates."""
    with h5py.File(path, "r") as h5:
        return int(h5[COORDS].shape[0]), dict(h5.attrs)


# ------------------------------------------------------------------------------------- features


@contextlib.contextmanager
def features_writer(
    path: str | Path,
    *,
    n_tiles: int,
    dim: int,
    coords: np.ndarray,
    coords_attrs: Mapping[str, Any],
    extra: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
) -> Iterator[h5py.Dataset]:
    """Open a features file for writing (atomically) and yield its empty ``features`` dataset to fill."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        features = h5.create_dataset(FEATURES, shape=(n_tiles, dim), dtype="float32")
        h5.create_dataset(COORDS, data=coords, dtype="int64")
        _set_attrs(h5[COORDS], coords_attrs)
        for name, data in extra.items():
            h5.create_dataset(name, data=data)
        _set_attrs(h5, attrs)
        yield features


def write_features(
    path: str | Path,
    *,
    features: np.ndarray,
    coords: np.ndarray,
    coords_attrs: Mapping[str, Any],
    attrs: Mapping[str, Any],
) -> None:
    """Write a whole features file atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset(FEATURES, data=features, dtype="float32")
        h5.create_dataset(COORDS, data=coords, dtype="int64")
        _set_attrs(h5[COORDS], coords_attrs)
        _set_attrs(h5, attrs)


def extraction_attrs(
    tiles_attrs: Mapping[str, Any],
    *,
    encoder: str,
    dim: int,
    input_px: int,
    weights_sha256: str,
    weights_path: str,
    precision: str,
    device: str,
    n_tiles: int,
    stain_norm: str | None,
    stain_target: str | None,
    tile_resize: str,
    region_decoder: str,
) -> dict[str, Any]:
    """A features file's attributes: the tiles file's, then the encoder's identity and how it ran."""
    attrs = dict(tiles_attrs)
    if VERSION in tiles_attrs:
        attrs["tiles_histofuse_version"] = tiles_attrs[VERSION]
    attrs |= {
        ENCODER: encoder,
        DIM: int(dim),
        "encoder_input_px": int(input_px),
        PRECISION: precision,
        WEIGHTS_SHA256: weights_sha256,
        "weights_path": weights_path,
        VERSION: __version__,
        "device": device,
        N_TILES: int(n_tiles),
        SOURCE: "extracted",
        "stain_norm": stain_norm or "none",
        "tile_resize": tile_resize,
    }
    if stain_target:
        attrs["stain_target"] = str(stain_target)
    attrs["region_decoder"] = region_decoder
    return attrs


@dataclass(frozen=True, kw_only=True)
class FeaturesFile:
    """What a features file holds, as stored (no dtype conversion)."""

    features: np.ndarray
    coords: np.ndarray
    attrs: dict[str, Any]
    coords_attrs: dict[str, Any]


def read_features_file(path: str | Path, *, errors: str = "strict") -> FeaturesFile:
    """Both datasets and all attributes, as stored; :class:`KeyError` names a missing dataset."""
    with h5py.File(path, "r") as h5:
        missing = [name for name in (FEATURES, COORDS) if name not in h5]
        if missing:
            raise KeyError(*missing)
        return FeaturesFile(
            features=np.asarray(h5[FEATURES][()]),
            coords=np.asarray(h5[COORDS][()]),
            attrs=_plain_attrs(h5.attrs, errors=errors),
            coords_attrs=_plain_attrs(h5[COORDS].attrs, errors=errors),
        )


def read_features(path: str | Path) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], dict[str, Any]]:
    """``features`` (N × dim float32), ``coords`` (N × 2 int64) and the plain file attributes."""
    with h5py.File(path, "r") as h5:
        features = np.asarray(h5[FEATURES][()], dtype=np.float32)
        coords = np.asarray(h5[COORDS][()], dtype=np.int64)
        attrs = _plain_attrs(h5.attrs)
    return features, coords, attrs


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The raw file attributes of a tiles or features file (values as h5py returns them)."""
    with h5py.File(path, "r") as h5:
        return dict(h5.attrs)


def read_feature_attrs(path: str | Path, *names: str) -> dict[str, Any]:
    """The plain values of the named file attributes (``None`` for those absent)."""
    with h5py.File(path, "r") as h5:
        return {name: plain(h5.attrs.get(name)) for name in names}


@dataclass(frozen=True, kw_only=True)
class FeaturesShape:
    """A features file's size and encoder, read without its data."""

    excluded: bool
    shape: tuple[int, ...]
    has_coords: bool
    encoder: str | None


def read_features_shape(path: str | Path) -> FeaturesShape:
    """Shape of ``features``, whether ``coords`` matches it, the encoder; :class:`KeyError` without ``features``."""
    with h5py.File(path, "r") as h5:
        if is_excluded_attrs(h5.attrs):
            return FeaturesShape(excluded=True, shape=(0, 0), has_coords=False, encoder=None)
        if FEATURES not in h5:
            raise KeyError(FEATURES)
        shape = tuple(h5[FEATURES].shape)
        has_coords = COORDS in h5 and h5[COORDS].shape == (shape[0], 2)
        encoder = plain(h5.attrs.get(ENCODER))
    return FeaturesShape(
        excluded=False, shape=shape, has_coords=has_coords, encoder=None if encoder is None else str(encoder)
    )


def read_feature_rows(
    path: str | Path, rows: npt.NDArray[np.int64] | None, *, with_coords: bool
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64] | None, npt.NDArray[np.int64] | None]:
    """``features`` and ``coords`` of the given rows (all with ``None``), and all coordinates.

    The third item is every row's coordinates when ``rows`` selects some (else ``None``).
    """
    with h5py.File(path, "r") as h5:
        selection: Any = () if rows is None else rows
        block = np.asarray(h5[FEATURES][selection], dtype=np.float32)
        if not with_coords:
            return block, None, None
        xy = np.asarray(h5[COORDS][selection], dtype=np.int64)
        every = None if rows is None else np.asarray(h5[COORDS][()], dtype=np.int64)
    return block, xy, every


# ------------------------------------------------------------------------------------ exclusion


def is_excluded_attrs(attrs: Mapping[str, Any]) -> bool:
    return bool(attrs.get(EXCLUDED, False))


def exclusion_attrs(*, slide: str, record: Mapping[str, str]) -> dict[str, Any]:
    """The attributes that flag a file as excluded, with the record's ``exclusion_<field>`` values."""
    attrs: dict[str, Any] = {EXCLUDED: True, SLIDE_ID: slide}
    for name in EXCLUSION_FIELDS:
        attrs[EXCLUSION_PREFIX + name] = record[name]
    attrs[N_TILES] = 0
    attrs[VERSION] = __version__
    return attrs


def write_excluded_tiles(path: str | Path, *, slide: str, record: Mapping[str, str]) -> None:
    """A tiles file with no tiles that carries an exclusion record."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset(COORDS, data=np.zeros((0, 2), dtype=np.int64))
        h5.create_dataset(TISSUE_FRACTION, data=np.zeros((0,), dtype=np.float32))
        _set_attrs(h5, exclusion_attrs(slide=slide, record=record))


def write_excluded_features(path: str | Path, *, slide: str, record: Mapping[str, str], encoder: str) -> None:
    """A features file with no tiles (0 × 0 features) that carries an exclusion record."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.create_dataset(FEATURES, data=np.zeros((0, 0), dtype=np.float32))
        h5.create_dataset(COORDS, data=np.zeros((0, 2), dtype=np.int64))
        h5.attrs[ENCODER] = encoder
        h5.attrs[DIM] = 0
        _set_attrs(h5, exclusion_attrs(slide=slide, record=record))


def read_exclusion_record(path: str | Path) -> tuple[str, dict[str, str]] | None:
    """``(slide_id, {field: text})`` of an excluded file; ``None`` for a processed slide."""
    with h5py.File(path, "r") as h5:
        if not is_excluded_attrs(h5.attrs):
            return None
        attrs = {key: h5.attrs.get(key) for key in h5.attrs}

    def text(name: str) -> str:
        value = attrs.get(name, "")
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    return text(SLIDE_ID), {name: text(EXCLUSION_PREFIX + name) for name in EXCLUSION_FIELDS}

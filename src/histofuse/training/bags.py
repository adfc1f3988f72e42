"""Tile-feature bags read from the slides' HDF5 files when a patient is needed, not held in memory.

A :class:`BagStore` knows, per patient, which ``{slide_id}.h5`` files hold its tiles and how many
tiles each has; it checks once that every file has the same feature width and encoder. A bag is
read on demand with :meth:`BagStore.load`, optionally as a random subset of ``max_tiles`` tiles
(training) read row-wise from the files, so memory follows one batch of bags, never the cohort.

A patient's slides are concatenated; their tile coordinates are translated side by side (each
slide to the right of the previous one, a gap of two grid steps between them), so models that
rebuild the tile grid from coordinates see one grid per patient without overlapping tiles.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from math import gcd
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from histofuse import h5layout
from histofuse.errors import HistofuseError

logger = logging.getLogger(__name__)

__all__ = ["Bag", "BagStore", "empty_bag_store", "open_bag_store"]


@dataclass(frozen=True, kw_only=True, eq=False)
class Bag:
    """One patient's tiles: ``features`` ``(N, D)`` float32 and ``coords`` ``(N, 2)`` int64 (or None)."""

    features: Tensor
    coords: Tensor | None


def _file_shape(path: Path) -> tuple[int, int, bool, str | None] | None:
    """``(n_tiles, dim, has_coords, encoder)`` of one feature file, without reading the features.

    ``None`` for a slide excluded by an earlier stage under ``on_error: skip`` (see ``exclusions.tsv``).
    """
    if not path.exists():
        raise HistofuseError(
            "tile-feature file is missing for a slide listed in slides.parquet.",
            path=path,
            fix="run feature extraction for this slide, or remove the slide from the sample sheet.",
        )
    try:
        found = h5layout.read_features_shape(path)
    except KeyError:
        raise HistofuseError(f"no '{h5layout.FEATURES}' dataset.", path=path) from None
    except OSError as exc:
        raise HistofuseError(f"cannot read the tile features ({exc}).", path=path) from None
    if found.excluded:
        return None
    shape = found.shape
    if len(shape) != 2:
        raise HistofuseError(f"'features' must be 2-D (tiles × dims), got shape {shape}.", path=path)
    return int(shape[0]), int(shape[1]), found.has_coords, found.encoder


def _grid_step(coords: npt.NDArray[np.int64]) -> int:
    offsets = (coords - coords.min(axis=0)).reshape(-1)
    return reduce(gcd, (int(v) for v in np.unique(offsets)), 0) or 1


@dataclass(frozen=True, kw_only=True, eq=False)
class BagStore:
    """Where each patient's tiles are (see the module docstring); index = patient row of the fold."""

    files: tuple[tuple[Path, ...], ...]
    sizes: tuple[tuple[int, ...], ...]
    n_dim: int
    has_coords: bool
    encoder: str | None = None

    def __len__(self) -> int:
        return len(self.files)

    def n_tiles(self, index: int) -> int:
        """Number of tiles of patient ``index`` (all its slides)."""
        return int(sum(self.sizes[index]))

    def load(self, index: int, *, max_tiles: int = 0, rng: np.random.Generator | None = None) -> Bag:
        """Patient ``index``'s bag; with ``max_tiles > 0`` and a generator, a random subset of that size."""
        total = self.n_tiles(index)
        keep: npt.NDArray[np.int64] | None = None
        if max_tiles > 0 and total > max_tiles:
            if rng is None:
                raise ValueError("subsampling a bag needs a random generator")
            keep = np.sort(rng.choice(total, size=max_tiles, replace=False)).astype(np.int64)
        features: list[npt.NDArray[np.float32]] = []
        coords: list[npt.NDArray[np.int64]] = []
        start, x_offset = 0, 0
        for path, size in zip(self.files[index], self.sizes[index], strict=True):
            rows = None if keep is None else keep[(keep >= start) & (keep < start + size)] - start
            start += size
            if size == 0:
                continue
            try:
                # with a subset, the slide's full coordinates fix its grid step and extent
                block, xy, all_xy = h5layout.read_feature_rows(path, rows, with_coords=self.has_coords)
            except OSError as exc:
                raise HistofuseError(f"cannot read the tile features ({exc}).", path=path) from None
            features.append(block)
            if xy is not None:
                reference = xy if all_xy is None else all_xy
                step = _grid_step(reference)
                origin = reference.min(axis=0)
                shifted = xy - origin
                shifted[:, 0] += x_offset
                x_offset += int((reference[:, 0] - origin[0]).max()) + 2 * step
                coords.append(shifted)
        feature_array = np.concatenate(features) if features else np.zeros((0, self.n_dim), np.float32)
        coord_tensor = None
        if self.has_coords:
            coord_array = np.concatenate(coords) if coords else np.zeros((0, 2), np.int64)
            coord_tensor = torch.from_numpy(coord_array)
        return Bag(features=torch.from_numpy(feature_array), coords=coord_tensor)


def open_bag_store(
    patient_ids: Sequence[str], slides: Mapping[str, Sequence[str]], features_dir: Path
) -> BagStore:
    """Index the feature files of ``patient_ids`` (slides per patient from ``slides``); read shapes only."""
    files: list[tuple[Path, ...]] = []
    sizes: list[tuple[int, ...]] = []
    dims: dict[int, Path] = {}
    encoders: dict[str, Path] = {}
    coords_everywhere = True
    excluded: list[str] = []
    for patient_id in patient_ids:
        paths = []
        counts = []
        for slide_id in slides.get(patient_id, []):
            path = Path(features_dir) / f"{slide_id}.h5"
            shape = _file_shape(path)
            if shape is None:
                excluded.append(slide_id)
                continue
            n_tiles, dim, has_coords, encoder = shape
            paths.append(path)
            dims.setdefault(dim, path)
            if encoder is not None:
                encoders.setdefault(encoder, path)
            coords_everywhere &= has_coords
            counts.append(n_tiles)
        files.append(tuple(paths))
        sizes.append(tuple(counts))
    if excluded:
        logger.warning(
            "%d slide(s) excluded by an earlier stage are left out (see exclusions.tsv): %s",
            len(excluded),
            ", ".join(excluded),
        )
    if not dims:
        raise HistofuseError(
            "no tile-feature file found for any patient of this fold.",
            path=features_dir,
            fix="check that slides.parquet lists the fold's patients and that features were extracted.",
        )
    if len(dims) > 1:
        examples = ", ".join(f"{dim} ({path.name})" for dim, path in dims.items())
        raise HistofuseError(f"tile features have different dimensions: {examples}.", path=features_dir)
    if len(encoders) > 1:
        examples = ", ".join(f"{name} ({path.name})" for name, path in encoders.items())
        raise HistofuseError(f"tile features come from different encoders: {examples}.", path=features_dir)
    n_empty = sum(1 for counts in sizes if sum(counts) == 0)
    if n_empty:
        logger.info("%d of %d patients have no tile features (empty bags)", n_empty, len(sizes))
    if not coords_everywhere:
        logger.info("some feature files have no 'coords' dataset; models that need tile positions cannot run")
    return BagStore(
        files=tuple(files),
        sizes=tuple(sizes),
        n_dim=next(iter(dims)),
        has_coords=coords_everywhere,
        encoder=next(iter(encoders), None),
    )


def empty_bag_store(n_patients: int) -> BagStore:
    """A store of ``n_patients`` empty bags of width 1 (a cohort without slides)."""
    return BagStore(files=((),) * n_patients, sizes=((),) * n_patients, n_dim=1, has_coords=True)

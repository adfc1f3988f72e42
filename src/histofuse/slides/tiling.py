"""Tile grids at a target resolution, kept where the tissue mask covers enough of the tile.

Coordinates are computed from the mask alone (a summed-area table gives every tile's tissue
fraction at once): no slide pixels are read while tiling. An optional cap keeps a seeded random
subset of the tissue tiles, in grid order.

The tiles file carries, on its ``coords`` dataset, the attribute names CLAM and TRIDENT read
(``patch_size``, ``patch_level``, ``patch_size_level0``, ``downsample``, ``level_dim``,
``downsampled_level_dim``, magnifications where known, ``name``, ``save_path``). ``patch_size`` is the
tile side at the target resolution (TRIDENT's meaning); CLAM reads ``patch_size`` pixels at
``patch_level``, which is the same tile whenever the read level matches the target resolution
(``read_tile_px == tile_px``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histofuse import h5layout
from histofuse.configuration import TilingConfig
from histofuse.errors import ConfigError
from histofuse.slides.reader import SlideInfo

log = logging.getLogger(__name__)


_TILINGSETTINGS_DEFAULTS = TilingConfig()
"""Defaults of ``TilingSettings``, from the configuration's description (:mod:`histofuse.configuration`)."""


@dataclass(frozen=True, kw_only=True)
class TilingSettings:
    """Where tiles are cut."""

    mpp: float = _TILINGSETTINGS_DEFAULTS.mpp
    """Target resolution in µm/px."""
    tile_px: int = _TILINGSETTINGS_DEFAULTS.tile_px
    """Tile side in pixels at the target resolution."""
    overlap_px: int = _TILINGSETTINGS_DEFAULTS.overlap_px
    """Overlap between neighbouring tiles, in pixels at the target resolution."""
    tissue_threshold: float = _TILINGSETTINGS_DEFAULTS.tissue_threshold
    """Smallest fraction of a tile covered by tissue for the tile to be kept."""
    max_tiles: int | None = _TILINGSETTINGS_DEFAULTS.max_tiles
    """Keep at most this many tissue tiles per slide, sampled at random (``None``: keep all)."""
    seed: int = _TILINGSETTINGS_DEFAULTS.seed
    """Seed of the sampling under ``max_tiles`` (the same seed keeps the same tiles)."""

    def __post_init__(self) -> None:
        if not self.mpp > 0:
            raise ConfigError("tiling.mpp must be positive.", column="tiling.mpp")
        if self.tile_px < 16:
            raise ConfigError("tiling.tile_px must be at least 16.", column="tiling.tile_px")
        if not 0 <= self.overlap_px < self.tile_px:
            raise ConfigError(
                "tiling.overlap_px must be at least 0 and smaller than tiling.tile_px.",
                column="tiling.overlap_px",
            )
        if not 0.0 <= self.tissue_threshold <= 1.0:
            raise ConfigError("tiling.tissue_threshold must lie in [0, 1].", column="tiling.tissue_threshold")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise ConfigError(
                "tiling.max_tiles must be at least 1.",
                column="tiling.max_tiles",
                fix="give a positive number of tiles, or null to keep every tissue tile.",
            )


@dataclass(frozen=True, kw_only=True)
class TileGrid:
    """Tile coordinates and how to read them."""

    coords: np.ndarray
    """(N, 2) int64 level-0 x, y of each tile's top-left corner."""
    tissue: np.ndarray
    """(N,) float32 tissue fraction of each tile."""
    attrs: dict[str, Any]


def tile_geometry(info: SlideInfo, settings: TilingSettings) -> dict[str, Any]:
    """Sizes of a tile at level 0, at the read level and at the target resolution."""
    tile_px_level0 = int(round(settings.tile_px * settings.mpp / info.mpp))
    stride_level0 = int(round((settings.tile_px - settings.overlap_px) * settings.mpp / info.mpp))
    read_level = info.best_level_for_mpp(settings.mpp)
    read_downsample = info.level_downsamples[read_level]
    read_tile_px = int(round(tile_px_level0 / read_downsample))
    read_width, read_height = info.level_dimensions[read_level]
    magnifications: dict[str, float] = {}
    if info.objective_power is not None:
        magnifications = {
            "level0_magnification": float(info.objective_power),
            "target_magnification": float(info.objective_power * info.mpp / settings.mpp),
        }
    return {
        "target_mpp": float(settings.mpp),
        "level0_mpp": float(info.mpp),
        "mpp_source": info.mpp_source,
        "read_level": int(read_level),
        "read_downsample": float(read_downsample),
        "read_mpp": float(info.mpp * read_downsample),
        "tile_px": int(settings.tile_px),
        "tile_px_level0": tile_px_level0,
        "stride_px_level0": stride_level0,
        "read_tile_px": read_tile_px,
        "overlap_px": int(settings.overlap_px),
        "tissue_threshold": float(settings.tissue_threshold),
        "level0_width": int(info.width),
        "level0_height": int(info.height),
        "read_level_width": int(read_width),
        "read_level_height": int(read_height),
        # CLAM / TRIDENT names for the same facts
        "patch_size": int(settings.tile_px),
        "patch_size_level0": tile_px_level0,
        "patch_level": int(read_level),
        "patch_mpp": float(settings.mpp),
        **magnifications,
    }


def tissue_fractions(mask: np.ndarray, x0: np.ndarray, y0: np.ndarray, size0: int, scale: tuple[float, float]) -> np.ndarray:
    """Fraction of mask pixels set inside each level-0 square (x0, y0, size0), vectorised.

    ``scale`` is (mask px per level-0 px along x, along y). Each square is mapped to the mask's
    pixel grid (at least one mask pixel wide) and summed with a summed-area table.
    """
    h, w = mask.shape
    # int32 holds any count below 2**31 mask pixels and halves the memory traffic of the table
    dtype = np.int32 if mask.size < 2**31 else np.int64
    sat = np.zeros((h + 1, w + 1), dtype=dtype)
    np.cumsum(mask, axis=0, dtype=dtype, out=sat[1:, 1:])
    np.cumsum(sat[1:, 1:], axis=1, out=sat[1:, 1:])
    sx, sy = scale
    left = np.clip(np.floor(x0 * sx).astype(np.int64), 0, w - 1)
    top = np.clip(np.floor(y0 * sy).astype(np.int64), 0, h - 1)
    right = np.clip(np.ceil((x0 + size0) * sx).astype(np.int64), left + 1, w)
    bottom = np.clip(np.ceil((y0 + size0) * sy).astype(np.int64), top + 1, h)
    inside = sat[bottom, right] - sat[top, right] - sat[bottom, left] + sat[top, left]
    area = (right - left) * (bottom - top)
    return (inside / area).astype(np.float32)


def compute_tile_grid(info: SlideInfo, mask: np.ndarray, settings: TilingSettings) -> TileGrid:
    """All tiles fully inside the slide whose tissue fraction reaches the threshold."""
    geometry = tile_geometry(info, settings)
    size0 = geometry["tile_px_level0"]
    stride0 = geometry["stride_px_level0"]
    xs = np.arange(0, info.width - size0 + 1, stride0, dtype=np.int64)
    ys = np.arange(0, info.height - size0 + 1, stride0, dtype=np.int64)
    gx, gy = np.meshgrid(xs, ys)
    x0 = gx.ravel()
    y0 = gy.ravel()
    if x0.size == 0 or not mask.any():
        keep = np.zeros(x0.shape, dtype=bool)
        fractions = np.zeros(x0.shape, dtype=np.float32)
    else:
        scale = (mask.shape[1] / info.width, mask.shape[0] / info.height)
        fractions = tissue_fractions(mask, x0, y0, size0, scale)
        keep = fractions >= settings.tissue_threshold
        if settings.tissue_threshold == 0:
            keep &= fractions > 0
    coords = np.stack([x0[keep], y0[keep]], axis=1) if keep.any() else np.zeros((0, 2), dtype=np.int64)
    tissue = fractions[keep]
    geometry["n_tissue_tiles"] = int(coords.shape[0])
    if settings.max_tiles is not None:
        geometry["max_tiles"] = int(settings.max_tiles)
        geometry["sampling_seed"] = int(settings.seed)
        chosen = sample_tile_indices(coords.shape[0], settings.max_tiles, seed=settings.seed)
        coords, tissue = coords[chosen], tissue[chosen]
    return TileGrid(coords=coords.astype(np.int64), tissue=tissue, attrs=geometry)


def sample_tile_indices(n: int, max_tiles: int, *, seed: int) -> np.ndarray:
    """Indices of at most ``max_tiles`` of ``n`` tiles, drawn without replacement, in increasing order.

    Deterministic for a seed; all ``n`` indices when ``n <= max_tiles``.
    """
    if n <= max_tiles:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_tiles, replace=False)).astype(np.int64)


def write_tiles_h5(grid: TileGrid, path: str | Path, *, slide_id: str, reader: str) -> None:
    """Write the grid as ``coords`` + ``tissue_fraction`` with self-describing attributes."""
    h5layout.write_tiles(
        path,
        coords=grid.coords,
        tissue=grid.tissue,
        attrs=grid.attrs,
        coords_attrs=h5layout.clam_coords_attrs(grid.attrs, slide_id=slide_id, save_path=Path(path).parent),
        slide_id=slide_id,
        reader=reader,
    )
    log.info("%s: %d tiles written to %s", slide_id, grid.coords.shape[0], path)


def read_tiles_h5(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Coordinates and attributes of a tiles file."""
    tiles = h5layout.read_tiles(path)
    return tiles.coords, tiles.attrs

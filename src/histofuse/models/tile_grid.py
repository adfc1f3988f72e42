"""The 2-D grid of a slide's tiles, rebuilt from their level-0 coordinates, and sampling on it.

A bag's tiles are the kept cells of a regular grid. The grid step is inferred from the coordinates
as the greatest common divisor of every tile's offset from the top-left tile, so the grid index
``(coord - min) / step`` is an exact integer for every tile. Cells without a tile (background,
holes) hold zeros. Positions on the grid are given in the normalised ``[-1, 1]`` convention of
:func:`torch.nn.functional.grid_sample` with ``align_corners=True``: -1 is the centre of the
first column / row and +1 the centre of the last one.

:func:`pseudo_grid` is the alternative layout of KSF's authors: the tiles, in bag order, fill a
fixed ``side x side`` square row by row, repeated cyclically when there are fewer tiles than slots
and evenly thinned when there are more; the slide's geometry is not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from math import gcd

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MAX_GRID_CELLS", "TileGrid", "bilinear_tile_weights", "pseudo_grid", "sample_grid", "tile_grid"]

MAX_GRID_CELLS = 1 << 22


def _normalise(index: Tensor, size: int) -> Tensor:
    if size == 1:
        return torch.zeros_like(index)
    return index * (2.0 / (size - 1)) - 1.0


@dataclass(frozen=True, kw_only=True)
class TileGrid:
    """Where each tile of a bag sits on its slide's grid.

    Attributes:
        rows, cols: ``(N,)`` grid indices of the tiles (``y`` and ``x``).
        height, width: grid size in cells.
        step: pixels between neighbouring cells (level 0).
        origin: ``(x, y)`` level-0 position of cell ``(0, 0)``.
    """

    rows: Tensor
    cols: Tensor
    height: int
    width: int
    step: int
    origin: tuple[int, int]

    def __post_init__(self) -> None:
        if self.rows.shape != self.cols.shape or self.rows.ndim != 1:
            raise ValueError("rows and cols must be two (N,) tensors")
        if self.height < 1 or self.width < 1 or self.step < 1:
            raise ValueError(
                f"grid size and step must be >= 1, got {self.height}x{self.width}, step {self.step}"
            )

    def scatter(self, features: Tensor) -> Tensor:
        """Tile features ``(N, C)`` placed on the grid: ``(C, height, width)``, zeros in holes."""
        if features.ndim != 2 or features.shape[0] != self.rows.shape[0]:
            raise ValueError(f"features must be ({self.rows.shape[0]}, C), got {tuple(features.shape)}")
        flat = features.new_zeros(self.height * self.width, features.shape[1])
        index = (self.rows * self.width + self.cols).to(features.device)
        flat = flat.index_copy(0, index, features)
        return flat.t().reshape(features.shape[1], self.height, self.width)

    def to_normalised(self, rows: Tensor, cols: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Grid positions (fractional allowed) → ``(..., 2)`` normalised ``(x, y)`` points."""
        x = _normalise(cols.to(dtype), self.width)
        y = _normalise(rows.to(dtype), self.height)
        return torch.stack([x, y], dim=-1)

    def to_grid_units(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised ``(..., 2)`` points → fractional ``(rows, cols)`` on the grid."""
        cols = (points[..., 0] + 1.0) * ((self.width - 1) / 2.0)
        rows = (points[..., 1] + 1.0) * ((self.height - 1) / 2.0)
        return rows, cols


def tile_grid(coords: Tensor, *, max_cells: int = MAX_GRID_CELLS) -> TileGrid:
    """The grid of the tiles at level-0 ``coords`` ``(N, 2)`` (``x``, ``y``), ``N >= 1``.

    Raises ``ValueError`` for an empty or malformed coordinate tensor, for two tiles on one cell,
    and for a grid of more than ``max_cells`` cells (coordinates that are not on a regular grid).
    """
    if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
        raise ValueError(f"coords must be (N, 2) with N >= 1, got {tuple(coords.shape)}")
    xy = coords.detach().cpu().to(torch.int64)
    origin = xy.min(dim=0).values
    offsets = xy - origin
    step = reduce(gcd, (int(value) for value in torch.unique(offsets)), 0) or 1
    grid_xy = offsets // step
    width = int(grid_xy[:, 0].max()) + 1
    height = int(grid_xy[:, 1].max()) + 1
    if height * width > max_cells:
        raise ValueError(
            f"the tiles span a {height}x{width} grid (step {step} px), more than {max_cells} cells; "
            "tile coordinates must lie on a regular grid"
        )
    cells = grid_xy[:, 1] * width + grid_xy[:, 0]
    if torch.unique(cells).numel() != cells.numel():
        raise ValueError("two tiles share one grid cell (duplicate coordinates)")
    return TileGrid(
        rows=grid_xy[:, 1],
        cols=grid_xy[:, 0],
        height=height,
        width=width,
        step=step,
        origin=(int(origin[0]), int(origin[1])),
    )


def pseudo_grid(n_tiles: int, side: int) -> tuple[TileGrid, Tensor]:
    """The authors' square pseudo-grid: every one of ``side²`` slots and the tile it holds.

    Returns the grid of the slots (row-major, step 1) and ``(side²,)`` tile indices: slot ``k`` holds
    tile ``k mod n_tiles`` when ``n_tiles <= side²`` (cyclic repetition), else tile
    ``round(k · n_tiles / side²)`` (evenly spaced tiles, halves rounded to even as NumPy does; the
    rest left out).
    """
    if n_tiles < 1 or side < 1:
        raise ValueError(f"a pseudo-grid needs n_tiles >= 1 and side >= 1, got {n_tiles} and {side}")
    slots = torch.arange(side * side, dtype=torch.int64)
    if n_tiles <= slots.numel():
        tiles = slots % n_tiles
    else:
        tiles = torch.round(slots.double() * (n_tiles / slots.numel())).long().clamp(max=n_tiles - 1)
    grid = TileGrid(rows=slots // side, cols=slots % side, height=side, width=side, step=1, origin=(0, 0))
    return grid, tiles


def sample_grid(feature_map: Tensor, points: Tensor) -> Tensor:
    """Bilinear samples of ``feature_map`` at normalised ``points``.

    ``feature_map`` is ``(G, C, H, W)`` (``G`` independent maps, e.g. attention heads) and
    ``points`` ``(G, P, 2)``; returns ``(G, P, C)``. Points outside the grid read zeros.
    """
    if feature_map.ndim != 4 or points.ndim != 3 or points.shape[0] != feature_map.shape[0]:
        raise ValueError(
            "feature_map must be (G, C, H, W) and points (G, P, 2), "
            f"got {tuple(feature_map.shape)} and {tuple(points.shape)}"
        )
    sampled = F.grid_sample(
        feature_map,
        points.unsqueeze(2).to(feature_map.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )
    return sampled.squeeze(-1).transpose(1, 2)


def bilinear_tile_weights(grid: TileGrid, points: Tensor) -> Tensor:
    """Weight of each tile in the bilinear sample at each normalised point: ``(N, P)``.

    The same weights :func:`sample_grid` uses, so ``weights.T @ features`` equals the sampled
    features; used to map sampling attention back onto the tiles.
    """
    rows, cols = grid.to_grid_units(points.reshape(-1, 2))
    tile_rows = grid.rows.to(points.device, points.dtype).unsqueeze(1)
    tile_cols = grid.cols.to(points.device, points.dtype).unsqueeze(1)
    weight_rows = (1.0 - (tile_rows - rows.unsqueeze(0)).abs()).clamp(min=0.0)
    weight_cols = (1.0 - (tile_cols - cols.unsqueeze(0)).abs()).clamp(min=0.0)
    return weight_rows * weight_cols

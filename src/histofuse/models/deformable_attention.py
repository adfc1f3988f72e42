"""Cross-modal deformable attention: a query vector reads a few learned positions of a slide's tile grid.

For each attention head the query predicts ``n_points`` sampling positions (fixed reference points
spread over the slide plus a learned, bounded offset) and a softmax weight per position. Tile
values are placed on the slide's real grid (:mod:`histofuse.models.tile_grid`), sampled bilinearly
with :func:`torch.nn.functional.grid_sample` and summed with the weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from histofuse.models.tile_grid import TileGrid, bilinear_tile_weights, sample_grid

__all__ = ["DeformableReadout", "CrossModalDeformableAttention", "reference_points"]


def reference_points(n_points: int) -> Tensor:
    """``n_points`` fixed ``(x, y)`` points of a centred square lattice in ``(-1, 1)``: ``(n_points, 2)``."""
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    side = math.ceil(math.sqrt(n_points))
    centres = (torch.arange(side, dtype=torch.float32) + 0.5) * (2.0 / side) - 1.0
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)[:n_points]


@dataclass(frozen=True, kw_only=True)
class DeformableReadout:
    """What one query read from the slides of a batch.

    Attributes:
        features: ``(B, dim)`` aggregated tile values (after the output projection).
        points: ``(B, n_heads, n_points, 2)`` normalised sampling positions.
        weights: ``(B, n_heads, n_points)`` softmax weights of the positions.
    """

    features: Tensor
    points: Tensor
    weights: Tensor


class CrossModalDeformableAttention(nn.Module):
    """Query ``(B, dim)`` × tile grids → ``(B, dim)`` features read at predicted positions."""

    def __init__(self, *, dim: int, n_heads: int, n_points: int, dropout: float) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} must be divisible by n_heads {n_heads}")
        self.dim = dim
        self.n_heads = n_heads
        self.n_points = n_points
        self.value = nn.Linear(dim, dim)
        self.offsets = nn.Linear(dim, n_heads * n_points * 2)
        self.attention = nn.Linear(dim, n_heads * n_points)
        self.output = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))
        nn.init.zeros_(self.offsets.weight)
        nn.init.zeros_(self.offsets.bias)
        self.register_buffer("reference", reference_points(n_points), persistent=False)
        self.missing = nn.Parameter(torch.randn(dim) * 0.02)

    def forward(
        self, query: Tensor, tiles: Sequence[Tensor], grids: Sequence[TileGrid | None]
    ) -> DeformableReadout:
        """Read each patient's slide with its query.

        ``tiles`` holds one ``(N_i, dim)`` tensor per patient and ``grids`` its grid (``None`` for a
        patient without tiles, who gets a learned "missing" vector).
        """
        batch = query.shape[0]
        if len(tiles) != batch or len(grids) != batch:
            raise ValueError(f"{batch} queries but {len(tiles)} bags and {len(grids)} grids")
        offsets = torch.tanh(self.offsets(query)).view(batch, self.n_heads, self.n_points, 2)
        points = (self.reference.to(query.dtype) + offsets).clamp(-1.0, 1.0)
        weights = torch.softmax(self.attention(query).view(batch, self.n_heads, self.n_points), dim=-1)
        head_dim = self.dim // self.n_heads
        read: list[Tensor] = []
        for index, (bag, grid) in enumerate(zip(tiles, grids, strict=True)):
            if grid is None or bag.shape[0] == 0:
                read.append(self.missing)
                continue
            value_map = grid.scatter(self.value(bag)).view(self.n_heads, head_dim, grid.height, grid.width)
            sampled = sample_grid(value_map, points[index])  # (heads, points, head_dim)
            read.append(torch.einsum("hp,hpc->hc", weights[index], sampled).reshape(self.dim))
        features = self.output(torch.stack(read))
        return DeformableReadout(features=features, points=points, weights=weights)

    @staticmethod
    def tile_attention(readout: DeformableReadout, index: int, grid: TileGrid) -> Tensor:
        """Share of patient ``index``'s sampling weight on each tile, ``(N,)``, averaged over heads."""
        points = readout.points[index].detach().reshape(-1, 2)
        per_point = readout.weights[index].detach().reshape(-1) / readout.weights.shape[1]
        return bilinear_tile_weights(grid, points) @ per_point

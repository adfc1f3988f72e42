"""Cross-modal deformable attention (DAT-style) on a slide's tile grid.

Every token of the query map (a tile fused with a gene embedding) attends to a small set of keys
and values that are read from the slide's tile map at learned positions:

1. the query map ``x_q`` and the key/value map ``x_kv`` are placed on the grid (zeros in holes);
   ``q = W_q x_q`` (a grouped 1 x 1 projection, ``n_heads · head_dim`` channels);
2. the channels of ``q`` are split into ``n_groups`` offset groups; one shared offset network
   (depthwise ``(s+2) x (s+2)`` convolution with stride ``s = downsample`` and padding 1, GELU,
   1 x 1 convolution to 2 channels, ``tanh``) predicts per group an offset field on the
   ``ceil(H/s) x ceil(W/s)`` key grid;
3. the sampling position of key cell ``(i, j)`` in grid cells is the centre of its ``s x s`` block
   plus ``offset_scale · s`` times the offset: ``(x, y) = (j·s + (s-1)/2, i·s + (s-1)/2) +
   offset_scale · s · tanh(·)`` (see :func:`sampling_positions`);
4. each group's channels of ``x_kv`` are sampled bilinearly at its group's positions
   (:func:`histofuse.models.tile_grid.sample_grid`, zeros outside the grid) and projected to keys
   and values (grouped 1 x 1 projections);
5. attention is the softmax over the keys of ``q·k / sqrt(head_dim)`` plus a relative-position bias:
   an MLP on ``sign(d) · log(1 + |d|)`` of the normalised query-minus-key position ``d``
   (:class:`RelativePositionBias`), shared by the groups, one output per head of a group;
6. the heads' outputs are concatenated and projected back to ``dim``.

Heads ``g · (n_heads / n_groups) … (g+1) · (n_heads / n_groups) - 1`` belong to group ``g``.
Queries are processed in chunks, recomputed in the backward pass (activation checkpointing), so
the memory of the relative-position bias follows one chunk, not the product of tokens and keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from histofuse.models.tile_grid import TileGrid, bilinear_tile_weights, sample_grid

__all__ = ["DeformableCrossAttention", "DeformableRead", "RelativePositionBias", "sampling_positions"]

_QUERY_CHUNK = 1024


def sampling_positions(offsets: Tensor, *, stride: int, offset_scale: float) -> Tensor:
    """Sampling positions in grid cells ``(G, h, w, 2)`` (``x``, ``y``) from raw offsets ``(G, 2, h, w)``.

    ``offsets`` are the offset network's outputs in ``[-1, 1]`` (after ``tanh``), channel 0 along
    ``x`` (columns) and channel 1 along ``y`` (rows), in units of key cells.
    """
    _, _, height, width = offsets.shape
    centre = (stride - 1) / 2.0
    ys = torch.arange(height, device=offsets.device, dtype=offsets.dtype) * stride + centre
    xs = torch.arange(width, device=offsets.device, dtype=offsets.dtype) * stride + centre
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    reference = torch.stack([x, y], dim=-1)  # (h, w, 2)
    return reference.unsqueeze(0) + offsets.permute(0, 2, 3, 1) * (offset_scale * stride)


def _normalised(positions: Tensor, grid: TileGrid) -> Tensor:
    """Grid-cell ``(…, 2)`` positions → the ``[-1, 1]`` convention of :mod:`histofuse.models.tile_grid`."""
    return grid.to_normalised(positions[..., 1], positions[..., 0], dtype=positions.dtype)


class RelativePositionBias(nn.Module):
    """Continuous relative-position bias: MLP on log-spaced position differences → one bias per head."""

    def __init__(self, *, hidden: int, n_outputs: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs)
        )

    def forward(self, queries: Tensor, keys: Tensor) -> Tensor:
        """Bias ``(G, Q, K, n_outputs)`` for query positions ``(Q, 2)`` and key positions ``(G, K, 2)``."""
        difference = queries.unsqueeze(0).unsqueeze(2) - keys.unsqueeze(1)
        return self.mlp(torch.sign(difference) * torch.log1p(difference.abs()))


@dataclass(frozen=True, kw_only=True)
class DeformableRead:
    """What the attention read for one slide.

    Attributes:
        output: ``(T, dim)`` attention output per token.
        positions: ``(n_groups, K, 2)`` normalised sampling positions of the keys.
        key_weights: ``(n_groups, K)`` mean attention each key received (detached).
        key_shape: ``(h, w)`` of the key grid (``K = h · w``, row-major).
    """

    output: Tensor
    positions: Tensor
    key_weights: Tensor
    key_shape: tuple[int, int]

    def position_field(self) -> Tensor:
        """The positions as a field on the key grid: ``(n_groups, 2, h, w)``."""
        height, width = self.key_shape
        return self.positions.reshape(self.positions.shape[0], height, width, 2).permute(0, 3, 1, 2)

    def token_attention(self, grid: TileGrid) -> Tensor:
        """Share of the read attention per token of ``grid`` ``(T,)``, through the bilinear weights."""
        total = self.positions.new_zeros(grid.rows.shape[0])
        for positions, weights in zip(self.positions.detach(), self.key_weights, strict=True):
            total = total + bilinear_tile_weights(grid, positions) @ weights
        return total / total.sum().clamp(min=torch.finfo(total.dtype).tiny)


class DeformableCrossAttention(nn.Module):
    """Tokens of a query map attend to keys / values read at learned positions of a second map."""

    def __init__(
        self,
        *,
        dim: int,
        n_heads: int,
        head_dim: int,
        n_groups: int,
        downsample: int,
        offset_scale: float,
        dropout: float,
    ) -> None:
        super().__init__()
        if n_heads % n_groups or dim % n_groups:
            raise ValueError(f"n_heads {n_heads} and dim {dim} must both be divisible by n_groups {n_groups}")
        inner = n_heads * head_dim
        self.dim, self.n_heads, self.head_dim, self.n_groups = dim, n_heads, head_dim, n_groups
        self.downsample, self.offset_scale = downsample, offset_scale
        group_channels = inner // n_groups
        self.to_q = nn.Conv2d(dim, inner, 1, groups=n_groups, bias=False)
        self.to_k = nn.Conv1d(dim, inner, 1, groups=n_groups, bias=False)
        self.to_v = nn.Conv1d(dim, inner, 1, groups=n_groups, bias=False)
        self.offsets = nn.Sequential(
            nn.Conv2d(
                group_channels, group_channels, downsample + 2, stride=downsample, padding=1, groups=group_channels
            ),
            nn.GELU(),
            nn.Conv2d(group_channels, 2, 1, bias=False),
            nn.Tanh(),
        )
        self.bias = RelativePositionBias(hidden=max(dim // 4, 1), n_outputs=n_heads // n_groups)
        self.dropout = nn.Dropout(dropout)
        self.to_out = nn.Linear(inner, dim)

    def _padded(self, grouped: Tensor) -> Tensor:
        """Zero-pad ``(G, C, H, W)`` on the bottom / right to whole ``s x s`` blocks."""
        s = self.downsample
        height, width = grouped.shape[-2:]
        return F.pad(grouped, (0, -width % s, 0, -height % s))

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, query_positions: Tensor, key_positions: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Attention of one chunk of queries: output ``(Q, heads · head_dim)`` and the summed weights per key."""
        heads = self.n_heads
        bias = self.bias(query_positions, key_positions)  # (G, Q, K, per_group)
        bias = bias.permute(0, 3, 1, 2).reshape(heads, bias.shape[1], -1)
        attention = torch.softmax(torch.einsum("hdq,hdk->hqk", q, k) + bias, dim=-1)
        output = torch.einsum("hqk,hdk->qhd", self.dropout(attention), v).reshape(-1, heads * self.head_dim)
        return output, attention.sum(dim=1)

    def forward(self, queries: Tensor, keys: Tensor, grid: TileGrid) -> DeformableRead:
        """Attend from ``queries`` ``(T, dim)`` to ``keys`` ``(T, dim)``, both the tokens of ``grid``."""
        groups, heads, per_group = self.n_groups, self.n_heads, self.n_heads // self.n_groups
        q_map = self.to_q(grid.scatter(queries).unsqueeze(0))[0]  # (inner, H, W)
        grouped_q = q_map.reshape(groups, -1, grid.height, grid.width)
        # positions in float32 even under autocast: bf16 would misplace them by a fraction of a cell
        offsets = self.offsets(self._padded(grouped_q))
        offsets = offsets.to(torch.promote_types(offsets.dtype, torch.float32))  # (G, 2, h, w)
        cells = sampling_positions(offsets, stride=self.downsample, offset_scale=self.offset_scale)
        positions = _normalised(cells.reshape(groups, -1, 2), grid)  # (G, K, 2)
        kv_map = grid.scatter(keys).reshape(groups, -1, grid.height, grid.width)
        sampled = sample_grid(kv_map.to(positions.dtype), positions).to(keys.dtype)  # (G, K, dim / G)
        sampled = sampled.permute(0, 2, 1).reshape(1, self.dim, -1)  # group-major channels
        k = self.to_k(sampled)[0].reshape(heads, self.head_dim, -1)  # (heads, d, K)
        v = self.to_v(sampled)[0].reshape(heads, self.head_dim, -1)
        index = (grid.rows * grid.width + grid.cols).to(q_map.device)
        q = q_map.reshape(heads, self.head_dim, -1)[:, :, index] * self.head_dim**-0.5  # (heads, d, T)
        token_positions = grid.to_normalised(grid.rows, grid.cols, dtype=positions.dtype).to(positions.device)
        outputs, key_weights = [], positions.new_zeros(heads, positions.shape[1])
        for start in range(0, index.numel(), _QUERY_CHUNK):
            part = slice(start, start + _QUERY_CHUNK)
            args = (q[:, :, part], k, v, token_positions[part], positions)
            if torch.is_grad_enabled():  # recomputed in the backward pass: memory follows one chunk
                output, attention_sum = checkpoint(self._attend, *args, use_reentrant=False)
            else:
                output, attention_sum = self._attend(*args)
            outputs.append(output)
            key_weights = key_weights + attention_sum.detach()
        key_weights = (key_weights / index.numel()).reshape(groups, per_group, -1).mean(dim=1)
        return DeformableRead(
            output=self.to_out(torch.cat(outputs)),
            positions=positions,
            key_weights=key_weights,
            key_shape=(offsets.shape[2], offsets.shape[3]),
        )


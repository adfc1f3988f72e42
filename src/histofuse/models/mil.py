"""Gated-attention multiple-instance learning over a bag of tile features (Ilse et al., 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["GatedAttentionMIL"]


class GatedAttentionMIL(nn.Module):
    """Pools a bag of ``N`` tile features ``(N, D)`` into one ``hidden_dim`` embedding.

    Each tile is projected (Linear + ReLU + Dropout), scored by gated attention
    ``w^T (tanh(V x) * sigmoid(U x))``, the scores are softmax-normalised over the bag and the
    projected tiles are summed with these weights. An empty bag (``N = 0``, a patient without slide
    features) is represented by a learned "missing" embedding and an empty attention vector.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        hidden_dim: int = 128,
        attention_dim: int | None = None,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        if in_dim < 1 or hidden_dim < 1:
            raise ValueError(f"in_dim and hidden_dim must be >= 1, got {in_dim}, {hidden_dim}")
        attention_dim = attention_dim or hidden_dim
        self.in_dim = in_dim
        self.out_dim = hidden_dim
        self.project = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention_tanh = nn.Sequential(nn.Linear(hidden_dim, attention_dim), nn.Tanh())
        self.attention_sigmoid = nn.Sequential(nn.Linear(hidden_dim, attention_dim), nn.Sigmoid())
        self.attention_dropout = nn.Dropout(dropout)
        self.attention_score = nn.Linear(attention_dim, 1)
        self.missing = nn.Parameter(torch.randn(hidden_dim) * 0.02)

    def forward(self, bag: Tensor) -> tuple[Tensor, Tensor]:
        """Return the bag embedding ``(hidden_dim,)`` and the attention weights ``(N,)``."""
        if bag.ndim != 2 or bag.shape[1] != self.in_dim:
            raise ValueError(f"bag must be (N, {self.in_dim}), got shape {tuple(bag.shape)}")
        if bag.shape[0] == 0:
            return self.missing, bag.new_zeros(0, dtype=self.missing.dtype)
        tiles = self.project(bag.to(self.missing.dtype))
        gated = self.attention_tanh(tiles) * self.attention_sigmoid(tiles)
        scores = self.attention_score(self.attention_dropout(gated)).squeeze(1)
        weights = torch.softmax(scores, dim=0)
        embedding = weights @ tiles
        return embedding, weights

    def forward_bags(self, bags: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Pool several bags: embeddings ``(B, hidden_dim)`` and one attention vector per bag."""
        embeddings: list[Tensor] = []
        attention: list[Tensor] = []
        for bag in bags:
            embedding, weights = self(bag)
            embeddings.append(embedding)
            attention.append(weights)
        return torch.stack(embeddings), attention

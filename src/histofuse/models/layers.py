"""Building blocks shared by the model families: task heads, MLPs, token pooling, grouped SNNs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from histofuse.models.inputs import select_columns
from histofuse.models.registry import TaskSpec
from histofuse.models.snn import SelfNormalizingNetwork

__all__ = ["GatedAttentionPool", "GroupedSNN", "TaskHeads", "mlp"]


def mlp(in_dim: int, hidden_dim: int, dropout: float, *, n_layers: int = 2) -> nn.Sequential:
    """``n_layers`` blocks of Linear + ReLU + Dropout, ``in_dim`` → ``hidden_dim``."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(n_layers):
        layers += [nn.Linear(width, hidden_dim), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden_dim
    return nn.Sequential(*layers)


class TaskHeads(nn.Module):
    """One linear head per task of ``task_spec`` on a shared ``(B, in_dim)`` representation."""

    def __init__(self, in_dim: int, task_spec: TaskSpec) -> None:
        super().__init__()
        self.task_spec = task_spec
        self.heads = nn.ModuleDict(
            {task: nn.Linear(in_dim, task_spec.n_outputs(task)) for task in task_spec.tasks}
        )

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """Logits ``(B, n_outputs(task))`` per task."""
        return {task: head(features) for task, head in self.heads.items()}


class GatedAttentionPool(nn.Module):
    """Gated attention pooling of a padded batch of tokens ``(B, T, dim)`` into ``(B, dim)``.

    ``mask`` ``(B, T)`` marks the real tokens; every row needs at least one.
    """

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.tanh = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.sigmoid = nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid())
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Linear(dim, 1)

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Pooled features ``(B, dim)`` and the attention weights ``(B, T)`` (0 at padding)."""
        scores = self.score(self.dropout(self.tanh(tokens) * self.sigmoid(tokens))).squeeze(-1)
        if mask is not None:
            if not bool(mask.any(dim=1).all()):
                raise ValueError("every row of the token mask needs at least one real token")
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return torch.einsum("bt,btd->bd", weights, tokens), weights


class GroupedSNN(nn.Module):
    """One self-normalising network per gene group: ``(B, G)`` genomics → ``(B, n_groups, out_dim)``."""

    def __init__(self, gene_groups: Sequence[Sequence[int]], out_dim: int, dropout: float) -> None:
        super().__init__()
        if not gene_groups:
            raise ValueError("GroupedSNN needs at least one gene group")
        self.gene_groups = [list(group) for group in gene_groups]
        self.networks = nn.ModuleList(
            SelfNormalizingNetwork(in_dim=len(group), hidden_dims=(out_dim, out_dim), dropout=dropout)
            for group in self.gene_groups
        )
        self.out_dim = out_dim

    def forward(self, genomics: Tensor) -> Tensor:
        """Group embeddings ``(B, n_groups, out_dim)``."""
        return torch.stack(
            [
                network(select_columns(genomics, group))
                for group, network in zip(self.gene_groups, self.networks, strict=True)
            ],
            dim=1,
        )

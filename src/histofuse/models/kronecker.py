"""``kronecker``: gated Kronecker (bilinear) fusion of slides and genomics (Chen et al., Pathomic Fusion).

Each modality embedding ``e_m`` (ABMIL for the slides, SNN for the genomics) is reduced to
``fusion_dim`` features and gated by the other modality:
``o_m = W_o (sigmoid(Bilinear(e_wsi, e_gen)) * ReLU(W_h e_m))``. A constant 1 is appended to both
``o_wsi`` and ``o_gen`` so that their outer product keeps the unimodal terms next to every pairwise
interaction; the flattened ``(fusion_dim + 1)²`` product goes through an MLP into the task heads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from histofuse.errors import ConfigError
from histofuse.models.base import ModelInputs, MultimodalModel
from histofuse.models.layers import TaskHeads, mlp
from histofuse.models.mil import GatedAttentionMIL
from histofuse.models.registry import InputDims, TaskSpec, register_model
from histofuse.models.snn import SelfNormalizingNetwork

__all__ = ["GatedModalityProjection", "KroneckerFusion", "kronecker_with_ones"]


def kronecker_with_ones(first: Tensor, second: Tensor) -> Tensor:
    """Flattened outer product of ``[first, 1]`` and ``[second, 1]`` per row: ``(B, (F1+1)(F2+1))``."""
    ones = first.new_ones(first.shape[0], 1)
    left = torch.cat([first, ones], dim=1)
    right = torch.cat([second, ones], dim=1)
    return torch.einsum("bi,bj->bij", left, right).flatten(1)


class GatedModalityProjection(nn.Module):
    """Reduces one modality to ``out_dim`` features, gated by a bilinear form of both modalities."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU())
        self.gate = nn.Bilinear(in_dim, in_dim, out_dim)
        self.out = nn.Sequential(nn.Linear(out_dim, out_dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, own: Tensor, wsi: Tensor, genomic: Tensor) -> Tensor:
        """Gated ``(B, out_dim)`` features of ``own`` (which is ``wsi`` or ``genomic``)."""
        return self.out(torch.sigmoid(self.gate(wsi, genomic)) * self.hidden(own))


class KroneckerFusion(MultimodalModel):
    """ABMIL(tiles), SNN(genomics) → gated projections → Kronecker product with 1s → MLP → heads."""

    model_name = "kronecker"

    def __init__(
        self,
        *,
        n_tiles_dim: int,
        n_genomic: int,
        task_spec: TaskSpec,
        hidden_dim: int,
        dropout: float,
        fusion_dim: int,
    ) -> None:
        super().__init__()
        self.n_genomic = n_genomic
        self.mil = GatedAttentionMIL(in_dim=n_tiles_dim, hidden_dim=hidden_dim, dropout=dropout)
        self.snn = SelfNormalizingNetwork(
            in_dim=n_genomic, hidden_dims=(hidden_dim, hidden_dim), dropout=dropout
        )
        self.wsi_projection = GatedModalityProjection(hidden_dim, fusion_dim, dropout)
        self.genomic_projection = GatedModalityProjection(hidden_dim, fusion_dim, dropout)
        self.encoder = nn.Sequential(nn.Dropout(dropout), mlp((fusion_dim + 1) ** 2, hidden_dim, dropout))
        self.heads = TaskHeads(hidden_dim, task_spec)

    def compute(self, inputs: ModelInputs) -> dict[str, Any]:
        """Task logits from bags and genomics; clinical data and coordinates are not used."""
        assert inputs.genomics is not None
        wsi, attention = self.mil.forward_bags(inputs.bags)
        genomic = self.snn(inputs.genomics)
        fused = kronecker_with_ones(
            self.wsi_projection(wsi, wsi, genomic), self.genomic_projection(genomic, wsi, genomic)
        )
        embedding = self.encoder(fused)
        return {**self.heads(embedding), "attention": attention, "embedding": embedding}


@register_model("kronecker")
def build_kronecker(
    *,
    dims: InputDims,
    task_spec: TaskSpec,
    hidden_dim: int = 128,
    dropout: float = 0.25,
    fusion_dim: int = 32,
) -> KroneckerFusion:
    """Builder for ``kronecker``; ``fusion_dim`` is the per-modality width before the product."""
    if dims.n_genomic < 1:
        raise ConfigError(
            "model 'kronecker' fuses slides with genomics, but no genomic feature is available.",
            fix="provide a genomics table, or train 'abmil' for slides only.",
        )
    if isinstance(fusion_dim, bool) or not isinstance(fusion_dim, int) or fusion_dim < 1:
        raise ConfigError(f"kronecker option fusion_dim must be an integer >= 1, got {fusion_dim!r}.")
    return KroneckerFusion(
        n_tiles_dim=dims.n_tiles_dim,
        n_genomic=dims.n_genomic,
        task_spec=task_spec,
        hidden_dim=hidden_dim,
        dropout=dropout,
        fusion_dim=fusion_dim,
    )

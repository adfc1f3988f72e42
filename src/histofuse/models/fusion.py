"""Multi-modal multi-task baseline: attention MIL over tiles + SNN over genomics, concatenated.

Registered as ``mm_baseline`` and, requiring genomic features, as ``concat`` (late fusion
ABMIL ⊕ SNN).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from histofuse.errors import ConfigError
from histofuse.models.base import ModelInputs, MultimodalModel
from histofuse.models.mil import GatedAttentionMIL
from histofuse.models.registry import InputDims, TaskSpec, register_model
from histofuse.models.snn import SelfNormalizingNetwork

__all__ = ["MultimodalBaseline"]


class MultimodalBaseline(MultimodalModel):
    """ABMIL(tiles) ⊕ SNN(genomics) → MLP → one linear head per task.

    Without genomic features (``n_genomic = 0``) the SNN branch is left out and the model is
    WSI-only. ``forward`` returns ``{task: logits (B, n_outputs)}`` plus ``"attention"`` (one
    ``(N_i,)`` weight vector per bag) and ``"embedding"`` (the fused ``(B, hidden_dim)`` features).
    """

    model_name = "forward"
    no_genomics_message = "this model expects {n_genomic} genomic features per patient"

    def __init__(
        self,
        *,
        n_tiles_dim: int,
        n_genomic: int,
        task_spec: TaskSpec,
        hidden_dim: int = 128,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.task_spec = task_spec
        self.n_genomic = n_genomic
        self.mil = GatedAttentionMIL(in_dim=n_tiles_dim, hidden_dim=hidden_dim, dropout=dropout)
        self.snn: SelfNormalizingNetwork | None = None
        fused_dim = self.mil.out_dim
        if n_genomic > 0:
            self.snn = SelfNormalizingNetwork(
                in_dim=n_genomic, hidden_dims=(hidden_dim, hidden_dim), dropout=dropout
            )
            fused_dim += self.snn.out_dim
        self.fusion = nn.Sequential(
            nn.Linear(fused_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.heads = nn.ModuleDict(
            {task: nn.Linear(hidden_dim, task_spec.n_outputs(task)) for task in task_spec.tasks}
        )

    def compute(self, inputs: ModelInputs) -> dict[str, Any]:
        """Logits per task, tile attention and fused embedding (clinical data and coordinates unused)."""
        wsi, attention = self.mil.forward_bags(inputs.bags)
        parts = [wsi]
        if self.snn is not None:
            assert inputs.genomics is not None
            parts.append(self.snn(inputs.genomics))
        fused = self.fusion(torch.cat(parts, dim=1))
        outputs: dict[str, Any] = {task: head(fused) for task, head in self.heads.items()}
        outputs["attention"] = attention
        outputs["embedding"] = fused
        return outputs


@register_model("mm_baseline")
def build_mm_baseline(
    *, dims: InputDims, task_spec: TaskSpec, hidden_dim: int = 128, dropout: float = 0.25
) -> MultimodalBaseline:
    """Builder for ``mm_baseline`` (clinical features, gene groups and subspaces are ignored)."""
    return MultimodalBaseline(
        n_tiles_dim=dims.n_tiles_dim,
        n_genomic=dims.n_genomic,
        task_spec=task_spec,
        hidden_dim=hidden_dim,
        dropout=dropout,
    )


@register_model("concat")
def build_concat(
    *, dims: InputDims, task_spec: TaskSpec, hidden_dim: int = 128, dropout: float = 0.25
) -> MultimodalBaseline:
    """Builder for ``concat``: late fusion ABMIL ⊕ SNN, which needs genomic features."""
    if dims.n_genomic < 1:
        raise ConfigError(
            "model 'concat' fuses slides with genomics, but no genomic feature is available.",
            fix="provide a genomics table, or train 'abmil' for slides only.",
        )
    return build_mm_baseline(dims=dims, task_spec=task_spec, hidden_dim=hidden_dim, dropout=dropout)

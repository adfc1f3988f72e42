"""Single-modality baselines: ``abmil`` (slides), ``snn`` (genomics) and ``clinical`` (clinical table).

Each encodes its one modality into a ``hidden_dim`` embedding, passes it through an MLP and one
linear head per task. The genomics and clinical baselines read no slide, so ``bags`` may be
``None`` or empty for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from histofuse.errors import ConfigError
from histofuse.models.base import ModelInputs, MultimodalModel
from histofuse.models.layers import TaskHeads, mlp
from histofuse.models.mil import GatedAttentionMIL
from histofuse.models.registry import InputDims, TaskSpec, register_model
from histofuse.models.snn import SelfNormalizingNetwork

__all__ = ["ClinicalMLP", "GenomicSNN", "SlideABMIL"]


def _empty_attention(batch_size: int) -> list[Tensor]:
    return [torch.empty(0) for _ in range(batch_size)]


class SlideABMIL(MultimodalModel):
    """Gated-attention MIL over the tiles → MLP → task heads (slides only)."""

    model_name = "abmil"

    def __init__(self, *, n_tiles_dim: int, task_spec: TaskSpec, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.mil = GatedAttentionMIL(in_dim=n_tiles_dim, hidden_dim=hidden_dim, dropout=dropout)
        self.encoder = mlp(hidden_dim, hidden_dim, dropout, n_layers=1)
        self.heads = TaskHeads(hidden_dim, task_spec)

    def compute(self, inputs: ModelInputs) -> dict[str, Any]:
        """Task logits from the bags alone; the other inputs are ignored."""
        pooled, attention = self.mil.forward_bags(inputs.bags)
        embedding = self.encoder(pooled)
        return {**self.heads(embedding), "attention": attention, "embedding": embedding}


class GenomicSNN(MultimodalModel):
    """Self-normalising network over all genomic features → task heads (genomics only).

    ``bags`` only fixes the batch size when given.
    """

    model_name = "snn"
    needs_slides = False

    def __init__(
        self,
        *,
        n_genomic: int,
        task_spec: TaskSpec,
        hidden_dim: int,
        dropout: float,
        hidden_dims: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.n_genomic = n_genomic
        self.snn = SelfNormalizingNetwork(
            in_dim=n_genomic, hidden_dims=tuple(hidden_dims or (hidden_dim, hidden_dim)), dropout=dropout
        )
        self.heads = TaskHeads(self.snn.out_dim, task_spec)

    def compute(self, inputs: ModelInputs) -> dict[str, Any]:
        """Task logits from genomics alone."""
        assert inputs.genomics is not None
        embedding = self.snn(inputs.genomics)
        return {
            **self.heads(embedding),
            "attention": _empty_attention(inputs.batch_size),
            "embedding": embedding,
        }


class ClinicalMLP(MultimodalModel):
    """MLP over the clinical features → task heads (clinical data only).

    ``bags`` only fixes the batch size when given.
    """

    model_name = "the clinical model"
    needs_slides = False
    reads_clinical = True
    needs_clinical = True

    def __init__(self, *, n_clinical: int, task_spec: TaskSpec, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.n_clinical = n_clinical
        self.encoder = mlp(n_clinical, hidden_dim, dropout, n_layers=2)
        self.heads = TaskHeads(hidden_dim, task_spec)

    def compute(self, inputs: ModelInputs) -> dict[str, Any]:
        """Task logits from the clinical features alone."""
        assert inputs.clinical is not None
        reference = next(self.parameters())
        embedding = self.encoder(inputs.clinical.to(device=reference.device, dtype=reference.dtype))
        return {
            **self.heads(embedding),
            "attention": _empty_attention(inputs.batch_size),
            "embedding": embedding,
        }


@register_model("abmil")
def build_abmil(*, dims: InputDims, task_spec: TaskSpec, hidden_dim: int = 128, dropout: float = 0.25) -> SlideABMIL:
    """Builder for ``abmil`` (slides only; genomic and clinical sizes are ignored)."""
    return SlideABMIL(n_tiles_dim=dims.n_tiles_dim, task_spec=task_spec, hidden_dim=hidden_dim, dropout=dropout)


@register_model("snn")
def build_snn(
    *,
    dims: InputDims,
    task_spec: TaskSpec,
    hidden_dim: int = 128,
    dropout: float = 0.25,
    hidden_dims: Sequence[int] | None = None,
) -> GenomicSNN:
    """Builder for ``snn`` (genomics only); ``hidden_dims`` (model_options) sets the layer widths."""
    if dims.n_genomic < 1:
        raise ConfigError(
            "model 'snn' reads genomics, but no genomic feature is available.",
            fix="provide a genomics table, or remove 'snn' from the models to train.",
        )
    return GenomicSNN(
        n_genomic=dims.n_genomic,
        task_spec=task_spec,
        hidden_dim=hidden_dim,
        dropout=dropout,
        hidden_dims=hidden_dims,
    )


@register_model("clinical")
def build_clinical(
    *, dims: InputDims, task_spec: TaskSpec, hidden_dim: int = 128, dropout: float = 0.25
) -> ClinicalMLP:
    """Builder for ``clinical`` (clinical table only)."""
    if dims.n_clinical < 1:
        raise ConfigError(
            "model 'clinical' reads clinical features, but none is available.",
            fix="provide a clinical table, or remove 'clinical' from the models to train.",
        )
    return ClinicalMLP(n_clinical=dims.n_clinical, task_spec=task_spec, hidden_dim=hidden_dim, dropout=dropout)

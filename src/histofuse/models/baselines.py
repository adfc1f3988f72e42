"""Single-modality baselines: ``abmil`` (slides), ``snn`` (genomics) and ``clinical`` (clinical table).

Each encodes its one modality into a ``hidden_dim`` embedding, passes it through an MLP and one
linear head per task. The genomics and clinical baselines read no slide, so ``bags`` may be
``None`` or empty for them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from histofuse.errors import ConfigError
from histofuse.models.inputs import as_bag_list, as_clinical_batch, as_genomics_batch, batch_size_of
from histofuse.models.layers import TaskHeads, mlp
from histofuse.models.mil import GatedAttentionMIL
from histofuse.models.registry import TaskSpec, register_model
from histofuse.models.snn import SelfNormalizingNetwork

__all__ = ["ClinicalMLP", "GenomicSNN", "SlideABMIL"]

BagsArg = Tensor | Sequence[Tensor] | None


def _empty_attention(batch_size: int) -> list[Tensor]:
    return [torch.empty(0) for _ in range(batch_size)]


class SlideABMIL(nn.Module):
    """Gated-attention MIL over the tiles → MLP → task heads (slides only)."""

    def __init__(self, *, n_tiles_dim: int, task_spec: TaskSpec, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.mil = GatedAttentionMIL(in_dim=n_tiles_dim, hidden_dim=hidden_dim, dropout=dropout)
        self.encoder = mlp(hidden_dim, hidden_dim, dropout, n_layers=1)
        self.heads = TaskHeads(hidden_dim, task_spec)

    def forward(
        self,
        bags: BagsArg,
        genomics: Tensor | None = None,
        clinical: Tensor | None = None,
        coords: Tensor | Sequence[Tensor] | None = None,
        *,
        clinical_present: Tensor | None = None,
    ) -> dict[str, Any]:
        """Task logits from the bags alone; the other inputs are ignored."""
        bag_list = as_bag_list(bags)
        if not bag_list:
            raise ValueError("abmil needs at least one bag")
        pooled, attention = self.mil.forward_bags(bag_list)
        embedding = self.encoder(pooled)
        return {**self.heads(embedding), "attention": attention, "embedding": embedding}


class GenomicSNN(nn.Module):
    """Self-normalising network over all genomic features → task heads (genomics only)."""

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

    def forward(
        self,
        bags: BagsArg = None,
        genomics: Tensor | None = None,
        clinical: Tensor | None = None,
        coords: Tensor | Sequence[Tensor] | None = None,
        *,
        clinical_present: Tensor | None = None,
    ) -> dict[str, Any]:
        """Task logits from genomics alone; ``bags`` only fixes the batch size when given."""
        bag_list = as_bag_list(bags)
        if genomics is None:
            raise ValueError(f"snn needs genomics with {self.n_genomic} features per patient")
        batch = as_genomics_batch(genomics, batch_size_of(bag_list, genomics))
        assert batch is not None
        reference = next(self.parameters())
        embedding = self.snn(batch.to(device=reference.device, dtype=reference.dtype))
        return {
            **self.heads(embedding),
            "attention": _empty_attention(batch.shape[0]),
            "embedding": embedding,
        }


class ClinicalMLP(nn.Module):
    """MLP over the clinical features → task heads (clinical data only)."""

    def __init__(self, *, n_clinical: int, task_spec: TaskSpec, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.n_clinical = n_clinical
        self.encoder = mlp(n_clinical, hidden_dim, dropout, n_layers=2)
        self.heads = TaskHeads(hidden_dim, task_spec)

    def forward(
        self,
        bags: BagsArg = None,
        genomics: Tensor | None = None,
        clinical: Tensor | None = None,
        coords: Tensor | Sequence[Tensor] | None = None,
        *,
        clinical_present: Tensor | None = None,
    ) -> dict[str, Any]:
        """Task logits from the clinical features alone; ``bags`` only fixes the batch size."""
        bag_list = as_bag_list(bags)
        if clinical is None:
            raise ValueError(f"the clinical model needs clinical with {self.n_clinical} features per patient")
        batch = as_clinical_batch(clinical, batch_size_of(bag_list, clinical), self.n_clinical)
        assert batch is not None
        reference = next(self.parameters())
        embedding = self.encoder(batch.to(device=reference.device, dtype=reference.dtype))
        return {
            **self.heads(embedding),
            "attention": _empty_attention(batch.shape[0]),
            "embedding": embedding,
        }


@register_model("abmil")
def build_abmil(
    *,
    n_tiles_dim: int,
    n_genomic: int,
    task_spec: TaskSpec,
    hidden_dim: int = 128,
    dropout: float = 0.25,
    n_clinical: int = 0,
    gene_groups: Sequence[Sequence[int]] | None = None,
    subspaces: Mapping[str, Sequence[int]] | None = None,
) -> SlideABMIL:
    """Builder for ``abmil`` (slides only; genomic and clinical sizes are ignored)."""
    return SlideABMIL(n_tiles_dim=n_tiles_dim, task_spec=task_spec, hidden_dim=hidden_dim, dropout=dropout)


@register_model("snn")
def build_snn(
    *,
    n_tiles_dim: int,
    n_genomic: int,
    task_spec: TaskSpec,
    hidden_dim: int = 128,
    dropout: float = 0.25,
    n_clinical: int = 0,
    gene_groups: Sequence[Sequence[int]] | None = None,
    subspaces: Mapping[str, Sequence[int]] | None = None,
    hidden_dims: Sequence[int] | None = None,
) -> GenomicSNN:
    """Builder for ``snn`` (genomics only); ``hidden_dims`` (model_options) sets the layer widths."""
    if n_genomic < 1:
        raise ConfigError(
            "model 'snn' reads genomics, but no genomic feature is available.",
            fix="provide a genomics table, or remove 'snn' from the models to train.",
        )
    return GenomicSNN(
        n_genomic=n_genomic, task_spec=task_spec, hidden_dim=hidden_dim, dropout=dropout, hidden_dims=hidden_dims
    )


@register_model("clinical")
def build_clinical(
    *,
    n_tiles_dim: int,
    n_genomic: int,
    task_spec: TaskSpec,
    hidden_dim: int = 128,
    dropout: float = 0.25,
    n_clinical: int = 0,
    gene_groups: Sequence[Sequence[int]] | None = None,
    subspaces: Mapping[str, Sequence[int]] | None = None,
) -> ClinicalMLP:
    """Builder for ``clinical`` (clinical table only)."""
    if n_clinical < 1:
        raise ConfigError(
            "model 'clinical' reads clinical features, but none is available.",
            fix="provide a clinical table, or remove 'clinical' from the models to train.",
        )
    return ClinicalMLP(n_clinical=n_clinical, task_spec=task_spec, hidden_dim=hidden_dim, dropout=dropout)

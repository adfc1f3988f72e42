"""``m2f``: multi-modal multi-task fusion with genomic-group queries co-attending over the tiles.

* Each gene group is embedded by its own SNN; the group embeddings are the queries of a
  co-attention (:class:`torch.nn.MultiheadAttention`, ``coattn_heads`` heads) whose keys and values
  are the projected tile features, giving one "genomics-guided" slide token per gene group.
* A transformer encoder (``n_layers`` layers of ``n_heads`` heads) runs over each modality's tokens
  (the co-attended slide tokens and the genomic group tokens), followed by gated attention pooling
  per modality and, with ``rho``, a Linear + ReLU + Dropout layer on each pooled vector.
* The two pooled vectors are fused by an MLP into one representation shared by every task head;
  all tasks are trained jointly.

This is MCAT's genomic-guided co-attention (Chen et al., ICCV 2021) extended to several tasks;
:class:`M2FOptions` holds the choices where our defaults differ from MCAT's (MCAT: one co-attention
head, two transformer layers of eight heads, ``rho`` on; ``config/examples/m2f_mcat.yaml``).

With ``joint=False`` the builder returns one independent copy of this model per task
(:class:`histofuse.models.independent.IndependentTaskModels`), so tasks share no parameter.
The returned ``"attention"`` is the co-attention over each bag's tiles averaged over heads and
gene groups (sums to 1 per non-empty bag).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from histofuse.errors import ConfigError
from histofuse.models.base import ModelInputs, MultimodalModel
from histofuse.models.independent import IndependentTaskModels
from histofuse.models.layers import GatedAttentionPool, GroupedSNN, TaskHeads, mlp
from histofuse.models.registry import InputDims, TaskSpec, register_model

__all__ = ["M2FOptions", "MultimodalMultitaskFusion"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class M2FOptions:
    """Options of ``m2f`` (``training.model_options.m2f``; MCAT's values in brackets).

    Attributes:
        joint: True trains all tasks through one shared model; False gives each task its own copy.
        n_heads: heads of the transformer layers [8]; must divide ``hidden_dim``.
        n_layers: transformer encoder layers per modality (>= 1) [2].
        coattn_heads: heads of the genomic-guided co-attention; None: ``n_heads`` [1].
        rho: a Linear + ReLU + Dropout layer on each modality's pooled vector before fusion [true].
    """

    joint: bool = True
    n_heads: int = 4
    n_layers: int = 1
    coattn_heads: int | None = None
    rho: bool = False

    def __post_init__(self) -> None:
        for name in ("joint", "rho"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"setting 'training.model_options.m2f.{name}' must be true or false, got {getattr(self, name)!r}."
                )
        for name in ("n_heads", "n_layers", "coattn_heads"):
            value = getattr(self, name)
            if name == "coattn_heads" and value is None:
                continue
            if not _is_int(value) or value < 1:
                raise ConfigError(
                    f"setting 'training.model_options.m2f.{name}' must be an integer >= 1, got {value!r}."
                )

    @property
    def co_attention_heads(self) -> int:
        """Heads of the co-attention (``coattn_heads``, else ``n_heads``)."""
        return self.n_heads if self.coattn_heads is None else self.coattn_heads

    def check_width(self, hidden_dim: int) -> None:
        """A :class:`ConfigError` when a head count does not divide ``hidden_dim``."""
        for name, heads in (("n_heads", self.n_heads), ("coattn_heads", self.co_attention_heads)):
            if hidden_dim % heads:
                raise ConfigError(
                    f"m2f: hidden_dim {hidden_dim} is not divisible by {name} {heads}.",
                    fix=f"choose {name} dividing hidden_dim.",
                )


def _encoder(dim: int, options: M2FOptions, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        d_model=dim, nhead=options.n_heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True
    )
    return nn.TransformerEncoder(layer, num_layers=options.n_layers, enable_nested_tensor=False)


def _rho(dim: int, options: M2FOptions, dropout: float) -> nn.Module:
    """MCAT's post-pooling layer (``rho``), or nothing."""
    if not options.rho:
        return nn.Identity()
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout))


class MultimodalMultitaskFusion(MultimodalModel):
    """Genomic-group co-attention over tiles, per-modality transformers, pooling, fusion, task heads."""

    model_name = "m2f"
    no_genomics_message = "m2f needs genomics: its gene groups are the co-attention queries"

    def __init__(
        self,
        *,
        n_tiles_dim: int,
        gene_groups: Sequence[Sequence[int]],
        task_spec: TaskSpec,
        hidden_dim: int,
        dropout: float,
        options: M2FOptions,
    ) -> None:
        super().__init__()
        self.n_genomic = sum(len(group) for group in gene_groups)  # the columns its groups read
        self.genomic_groups = GroupedSNN(gene_groups, hidden_dim, dropout)
        self.tile_encoder = nn.Sequential(nn.Linear(n_tiles_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.missing_tile = nn.Parameter(torch.randn(hidden_dim) * 0.02)
        # no dropout on the co-attention weights: they are returned as the tiles' attention
        self.co_attention = nn.MultiheadAttention(hidden_dim, options.co_attention_heads, batch_first=True)
        self.wsi_encoder = _encoder(hidden_dim, options, dropout)
        self.genomic_encoder = _encoder(hidden_dim, options, dropout)
        self.wsi_pool = GatedAttentionPool(hidden_dim, dropout)
        self.genomic_pool = GatedAttentionPool(hidden_dim, dropout)
        self.wsi_rho = _rho(hidden_dim, options, dropout)
        self.genomic_rho = _rho(hidden_dim, options, dropout)
        self.fusion = mlp(2 * hidden_dim, hidden_dim, dropout)
        self.heads = TaskHeads(hidden_dim, task_spec)

    def _padded_tiles(self, bags: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Projected tiles ``(B, N_max, H)`` and the padding mask (True = padding).

        An empty bag gets the learned "missing" token as its only key.
        """
        encoded = [self.tile_encoder(bag) if bag.shape[0] else self.missing_tile.unsqueeze(0) for bag in bags]
        longest = max(tokens.shape[0] for tokens in encoded)
        padded = self.missing_tile.new_zeros(len(bags), longest, self.missing_tile.shape[0])
        padding = torch.ones(len(bags), longest, dtype=torch.bool, device=padded.device)
        for index, tokens in enumerate(encoded):
            padded[index, : tokens.shape[0]] = tokens
            padding[index, : tokens.shape[0]] = False
        return padded, padding

    def compute(self, inputs: ModelInputs) -> dict[str, Any]:
        """Task logits, co-attention over tiles and the fused embedding (clinical data unused)."""
        assert inputs.genomics is not None
        group_tokens = self.genomic_groups(inputs.genomics)
        tiles, padding = self._padded_tiles(inputs.bags)
        guided, weights = self.co_attention(
            group_tokens, tiles, tiles, key_padding_mask=padding, need_weights=True, average_attn_weights=True
        )
        wsi = self.wsi_rho(self.wsi_pool(self.wsi_encoder(guided))[0])
        genomic = self.genomic_rho(self.genomic_pool(self.genomic_encoder(group_tokens))[0])
        embedding = self.fusion(torch.cat([wsi, genomic], dim=1))
        tile_weights = weights.mean(dim=1)
        attention = [tile_weights[index, : bag.shape[0]] for index, bag in enumerate(inputs.bags)]
        return {**self.heads(embedding), "attention": attention, "embedding": embedding}


@register_model("m2f")
def build_m2f(
    *,
    dims: InputDims,
    task_spec: TaskSpec,
    hidden_dim: int = 128,
    dropout: float = 0.25,
    joint: bool = True,
    n_heads: int = 4,
    n_layers: int = 1,
    coattn_heads: int | None = None,
    rho: bool = False,
) -> nn.Module:
    """Builder for ``m2f`` (options: :class:`M2FOptions`); ``joint=False`` gives one copy per task."""
    options = M2FOptions(joint=joint, n_heads=n_heads, n_layers=n_layers, coattn_heads=coattn_heads, rho=rho)
    if dims.n_genomic < 1 or not dims.gene_groups:
        raise ConfigError(
            "model 'm2f' uses gene groups as queries, but no genomic feature is available.",
            fix="provide a genomics table, or train 'abmil' for slides only.",
        )
    options.check_width(hidden_dim)
    groups = [list(group) for group in dims.gene_groups]

    def build(spec: TaskSpec) -> MultimodalMultitaskFusion:
        return MultimodalMultitaskFusion(
            n_tiles_dim=dims.n_tiles_dim,
            gene_groups=groups,
            task_spec=spec,
            hidden_dim=hidden_dim,
            dropout=dropout,
            options=options,
        )

    return build(task_spec) if options.joint else IndependentTaskModels(task_spec, build)


@register_model("m2f_separate")
def build_m2f_separate(
    *,
    dims: InputDims,
    task_spec: TaskSpec,
    hidden_dim: int = 128,
    dropout: float = 0.25,
    n_heads: int = 4,
    n_layers: int = 1,
    coattn_heads: int | None = None,
    rho: bool = False,
) -> nn.Module:
    """Builder for ``m2f_separate``: the ``joint: false`` ablation of ``m2f`` (one model per task)."""
    return build_m2f(
        dims=dims,
        task_spec=task_spec,
        hidden_dim=hidden_dim,
        dropout=dropout,
        joint=False,
        n_heads=n_heads,
        n_layers=n_layers,
        coattn_heads=coattn_heads,
        rho=rho,
    )

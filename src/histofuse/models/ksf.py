"""``ksf``: knowledge-steered fusion of genomic subspaces and slides with cross-modal deformable attention.

Two genomic subspaces, ``tumour`` and ``microenvironment`` (column indices given by the builder's
``subspaces``), are each embedded by their own SNN. Each subspace embedding is the query of one
shared :class:`CrossModalDeformableAttention` that reads the slide at positions it predicts on the
slide's real tile grid (rebuilt from ``coords``). A branch combines its subspace embedding with what
it read; the two branch embeddings are concatenated into the task heads.

Extra outputs:

* ``aux_losses["consistency"]``: gene-guided consistency, the mismatch between the batch's
  similarity structure in each genomic subspace (raw subspace features, fixed) and in the histology
  that subspace read, averaged over the two branches (see
  :func:`histofuse.losses.similarity_consistency`);
* ``branches``: ``{"tumour": (B, hidden), "microenvironment": (B, hidden)}`` embeddings;
* ``branch_logits``: per branch, one small head per task on the branch embedding alone, so each
  branch's confidence can be measured for gradient coordination
  (:mod:`histofuse.models.gradient_coordination`) on :meth:`KnowledgeSteeredFusion.shared_parameters`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from histofuse.errors import ConfigError
from histofuse.losses import ConsistencyKind, similarity_consistency
from histofuse.models.deformable_attention import CrossModalDeformableAttention
from histofuse.models.inputs import as_bag_list, as_coords_list, as_genomics_batch, select_columns
from histofuse.models.layers import TaskHeads, mlp
from histofuse.models.registry import TaskSpec, register_model
from histofuse.models.snn import SelfNormalizingNetwork
from histofuse.models.tile_grid import TileGrid, tile_grid

__all__ = ["KSF_BRANCHES", "KSFOptions", "KnowledgeSteeredFusion"]

KSF_BRANCHES: tuple[str, ...] = ("tumour", "microenvironment")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class KSFOptions:
    """Options of ``ksf``.

    Attributes:
        n_heads: attention heads of the deformable attention (``hidden_dim`` must be divisible).
        n_points: sampling positions per head and query.
        consistency: ``"mse"`` (between cosine-similarity matrices) or ``"kl"`` (between their
            row-softmaxes) for the gene-guided consistency loss.
    """

    n_heads: int = 4
    n_points: int = 16
    consistency: ConsistencyKind = "mse"

    def __post_init__(self) -> None:
        for name in ("n_heads", "n_points"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"ksf option {name} must be an integer >= 1, got {value!r}.")
        if self.consistency not in ("mse", "kl"):
            raise ConfigError(
                f"ksf option consistency must be 'mse' or 'kl', got {self.consistency!r}.",
                fix="set consistency to 'mse' or 'kl'.",
            )


class KnowledgeSteeredFusion(nn.Module):
    """Genomic-subspace queries steer deformable reads of the slide; see the module docstring."""

    def __init__(
        self,
        *,
        n_tiles_dim: int,
        subspaces: Mapping[str, Sequence[int]],
        task_spec: TaskSpec,
        hidden_dim: int,
        dropout: float,
        options: KSFOptions,
    ) -> None:
        super().__init__()
        self.options = options
        self.subspaces = {name: list(subspaces[name]) for name in KSF_BRANCHES}
        self.tile_encoder = nn.Sequential(nn.Linear(n_tiles_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.reader = CrossModalDeformableAttention(
            dim=hidden_dim, n_heads=options.n_heads, n_points=options.n_points, dropout=dropout
        )
        self.subspace_encoders = nn.ModuleDict(
            {
                name: SelfNormalizingNetwork(
                    in_dim=len(columns), hidden_dims=(hidden_dim, hidden_dim), dropout=dropout
                )
                for name, columns in self.subspaces.items()
            }
        )
        self.branch_encoders = nn.ModuleDict(
            {name: mlp(2 * hidden_dim, hidden_dim, dropout, n_layers=1) for name in KSF_BRANCHES}
        )
        self.branch_heads = nn.ModuleDict({name: TaskHeads(hidden_dim, task_spec) for name in KSF_BRANCHES})
        self.heads = TaskHeads(2 * hidden_dim, task_spec)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters both branches use (tile encoder, deformable reader): where gradients are coordinated."""
        yield from self.tile_encoder.parameters()
        yield from self.reader.parameters()

    def forward(
        self,
        bags: Tensor | Sequence[Tensor],
        genomics: Tensor | None = None,
        clinical: Tensor | None = None,
        coords: Tensor | Sequence[Tensor] | None = None,
        *,
        clinical_present: Tensor | None = None,
    ) -> dict[str, Any]:
        """Task logits, tile attention, embedding, consistency loss, branch embeddings and logits."""
        bag_list = as_bag_list(bags)
        if not bag_list:
            raise ValueError("ksf needs at least one bag")
        coord_list = as_coords_list(coords, bag_list)
        genomic_batch = as_genomics_batch(genomics, len(bag_list))
        if genomic_batch is None:
            raise ValueError("ksf needs genomics for its tumour and microenvironment subspaces")
        reference = next(self.parameters())
        dtype = reference.dtype
        genomic_batch = genomic_batch.to(device=reference.device, dtype=dtype)
        grids: list[TileGrid | None] = [tile_grid(xy) if xy.shape[0] else None for xy in coord_list]
        tiles = [self.tile_encoder(bag.to(device=reference.device, dtype=dtype)) for bag in bag_list]

        branches: dict[str, Tensor] = {}
        branch_logits: dict[str, dict[str, Tensor]] = {}
        consistency: list[Tensor] = []
        attention = [encoded.new_zeros(encoded.shape[0]).detach() for encoded in tiles]
        for name in KSF_BRANCHES:
            raw = select_columns(genomic_batch, self.subspaces[name])
            query = self.subspace_encoders[name](raw)
            readout = self.reader(query, tiles, grids)
            embedding = self.branch_encoders[name](torch.cat([query, readout.features], dim=1))
            branches[name] = embedding
            branch_logits[name] = self.branch_heads[name](embedding)
            consistency.append(similarity_consistency(raw, readout.features, kind=self.options.consistency))
            for index, grid in enumerate(grids):
                if grid is not None:
                    attention[index] = attention[index] + self.reader.tile_attention(
                        readout, index, grid
                    ) / len(KSF_BRANCHES)
        embedding = torch.cat([branches[name] for name in KSF_BRANCHES], dim=1)
        return {
            **self.heads(embedding),
            "attention": attention,
            "embedding": embedding,
            "aux_losses": {"consistency": torch.stack(consistency).mean()},
            "branches": branches,
            "branch_logits": branch_logits,
        }


@register_model("ksf")
def build_ksf(
    *,
    n_tiles_dim: int,
    n_genomic: int,
    task_spec: TaskSpec,
    hidden_dim: int = 128,
    dropout: float = 0.25,
    n_clinical: int = 0,
    gene_groups: Sequence[Sequence[int]] | None = None,
    subspaces: Mapping[str, Sequence[int]] | None = None,
    n_heads: int = 4,
    n_points: int = 16,
    consistency: ConsistencyKind = "mse",
) -> KnowledgeSteeredFusion:
    """Builder for ``ksf``; needs the ``tumour`` and ``microenvironment`` genomic subspaces."""
    options = KSFOptions(n_heads=n_heads, n_points=n_points, consistency=consistency)
    missing = [name for name in KSF_BRANCHES if not (subspaces or {}).get(name)]
    if missing:
        raise ConfigError(
            f"model 'ksf' needs the genomic subspace(s) {missing}, which are not defined.",
            fix="assign genes to the 'tumour' and 'microenvironment' subspaces in the gene table.",
        )
    if hidden_dim % options.n_heads:
        raise ConfigError(
            f"ksf: hidden_dim {hidden_dim} is not divisible by n_heads {options.n_heads}.",
            fix="choose n_heads dividing hidden_dim.",
        )
    assert subspaces is not None
    return KnowledgeSteeredFusion(
        n_tiles_dim=n_tiles_dim,
        subspaces=subspaces,
        task_spec=task_spec,
        hidden_dim=hidden_dim,
        dropout=dropout,
        options=options,
    )

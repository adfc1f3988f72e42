"""``ksf``: knowledge-driven subspace fusion of gene subspaces and slides (Zhang et al.).

Two genomic subspaces, ``tumour`` and ``microenvironment`` (column indices given by the builder's
``subspaces``), each get their own branch (:class:`SubspaceBranch`), built like the authors'
``DeformCrossTransMIL``: a gene encoder (SNN) embeds the subspace; the branch's own tile encoder
embeds the tiles; each tile is fused with the gene embedding (a linear layer on the concatenation)
into a query map; cross-modal deformable attention
(:class:`histofuse.models.deformable_attention.DeformableCrossAttention`) lets every query token
read the tile map at learned positions (pre-norm, residual); the tokens are normalised, averaged,
pooled (linear + tanh) and projected into the branch embedding. The fused heads see the
concatenation ``[tumour, microenvironment]``; each branch also has its own heads
(``branch_logits``), trained with weight ``branch_loss_weight`` (0 = as the authors: not at all).

Layout of the tiles (``grid``): ``"pseudo"`` (default, as the authors) packs them, in bag order,
into a fixed ``pseudo_side x pseudo_side`` square (:func:`histofuse.models.tile_grid.pseudo_grid`),
where every slot is a query; ``"real"`` places them on the slide's own tile grid rebuilt from their
coordinates (holes stay empty, only tiles are queries): cheaper on large slides, but not shown to be
as good (README, "KSF").

Extra outputs:

* ``aux_losses["consistency"]``: gene-guided consistency (:func:`histofuse.losses.gene_guided_consistency`)
  between each branch's learned gene embeddings and its sampling positions, averaged over the
  branches. Positions of slides with key grids of different sizes are compared after average
  pooling to the batch's smallest key grid;
* ``branches`` / ``branch_logits``: per branch, its embedding and its own heads' logits;
* ``half_logits``: per task, the fused head applied to each half alone (``W[:, half] x + b / 2``),
  detached: the branches' confidences for gradient coordination
  (:mod:`histofuse.models.gradient_coordination`) on :meth:`KnowledgeSteeredFusion.coordination_heads`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from histofuse.errors import ConfigError
from histofuse.losses import gene_guided_consistency
from histofuse.models.base import CoordsArg, ModelInputs, MultimodalModel
from histofuse.models.deformable_attention import DeformableCrossAttention, DeformableRead
from histofuse.models.inputs import as_coords_list, select_columns
from histofuse.models.layers import TaskHeads
from histofuse.models.registry import InputDims, TaskSpec, register_model
from histofuse.models.snn import SelfNormalizingNetwork
from histofuse.models.tile_grid import TileGrid, pseudo_grid, tile_grid

__all__ = ["KSF_BRANCHES", "KSF_GRIDS", "KSFOptions", "KnowledgeSteeredFusion", "SubspaceBranch"]

KSF_BRANCHES: tuple[str, ...] = ("tumour", "microenvironment")
KSF_GRIDS: tuple[str, ...] = ("real", "pseudo")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class KSFOptions:
    """Options of ``ksf`` (``training.model_options.ksf``); defaults are the authors' values.

    Attributes:
        grid: ``"pseudo"`` (the authors' square packing) or ``"real"`` (the slide's tile grid).
        pseudo_side: side of the pseudo-grid in slots (the authors: 50, i.e. 2500 tiles).
        n_heads, head_dim: attention heads and their width.
        offset_groups: groups of heads that share sampling positions (divides ``n_heads`` and
            ``hidden_dim``).
        downsample: stride ``s`` of the key grid (one key per ``s x s`` block of the map).
        offset_scale: largest offset, in key cells.
        branch_loss_weight: weight of the branch heads' losses (0: branch heads are not trained).
    """

    grid: str = "pseudo"
    pseudo_side: int = 50
    n_heads: int = 8
    head_dim: int = 64
    offset_groups: int = 8
    downsample: int = 4
    offset_scale: float = 4.0
    branch_loss_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.grid not in KSF_GRIDS:
            raise ConfigError(
                f"ksf option grid must be one of {list(KSF_GRIDS)}, got {self.grid!r}.",
                fix="set training.model_options.ksf.grid to real or pseudo.",
            )
        for name in ("pseudo_side", "n_heads", "head_dim", "offset_groups", "downsample"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"ksf option {name} must be an integer >= 1, got {value!r}.")
        for name in ("offset_scale", "branch_loss_weight"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ConfigError(f"ksf option {name} must be a number >= 0, got {value!r}.")
        if self.n_heads % self.offset_groups:
            raise ConfigError(
                f"ksf: n_heads {self.n_heads} is not divisible by offset_groups {self.offset_groups}.",
                fix="choose offset_groups dividing n_heads.",
            )


@dataclass(frozen=True, kw_only=True)
class _Layout:
    """One patient's tokens: the grid they sit on and the tile each token holds (None: token = tile)."""

    grid: TileGrid
    token_tiles: Tensor | None


@dataclass(frozen=True, kw_only=True)
class BranchOutput:
    """A branch's embeddings ``(B, dim)``, gene embeddings ``(B, dim)`` and per-patient reads."""

    embedding: Tensor
    genes: Tensor
    reads: list[DeformableRead | None]
    attention: list[Tensor]


class SubspaceBranch(nn.Module):
    """One gene subspace reading the slide: gene encoder, tile encoder, fusion, deformable attention."""

    def __init__(
        self, *, n_tiles_dim: int, n_genes: int, hidden_dim: int, dropout: float, options: KSFOptions
    ) -> None:
        super().__init__()
        self.gene_encoder = SelfNormalizingNetwork(
            in_dim=n_genes, hidden_dims=(hidden_dim, hidden_dim), dropout=dropout
        )
        self.tile_encoder = nn.Sequential(nn.Linear(n_tiles_dim, hidden_dim), nn.ReLU())
        self.fuse = nn.Linear(2 * hidden_dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.attention = DeformableCrossAttention(
            dim=hidden_dim,
            n_heads=options.n_heads,
            head_dim=options.head_dim,
            n_groups=options.offset_groups,
            downsample=options.downsample,
            offset_scale=options.offset_scale,
            dropout=dropout,
        )
        self.out_norm = nn.LayerNorm(hidden_dim)
        self.pool = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.Tanh())
        self.project = nn.Linear(hidden_dim, hidden_dim)
        self.missing = nn.Parameter(torch.zeros(hidden_dim))

    def forward(self, bags: Sequence[Tensor], layouts: Sequence[_Layout | None], genes: Tensor) -> BranchOutput:
        """Read every patient's slide steered by its gene embedding."""
        gene_embedding = self.gene_encoder(genes)
        pooled: list[Tensor] = []
        reads: list[DeformableRead | None] = []
        attention: list[Tensor] = []
        for index, (bag, layout) in enumerate(zip(bags, layouts, strict=True)):
            if layout is None:
                pooled.append(self.missing)
                reads.append(None)
                attention.append(bag.new_zeros(bag.shape[0]))
                continue
            tiles = self.tile_encoder(bag)
            tokens = tiles if layout.token_tiles is None else tiles[layout.token_tiles.to(tiles.device)]
            queries = self.fuse(torch.cat([tokens, gene_embedding[index].expand_as(tokens)], dim=1))
            read = self.attention(self.norm(queries), self.norm(tokens), layout.grid)
            pooled.append(self.out_norm(queries + read.output).mean(dim=0))
            reads.append(read)
            shares = read.token_attention(layout.grid)
            if layout.token_tiles is not None:
                tiles_of_tokens = layout.token_tiles.to(bag.device)
                shares = bag.new_zeros(bag.shape[0]).index_add(0, tiles_of_tokens, shares.to(bag.dtype))
            attention.append(shares.detach())
        embedding = self.project(self.pool(torch.stack(pooled)))
        return BranchOutput(embedding=embedding, genes=gene_embedding, reads=reads, attention=attention)


def position_features(reads: Sequence[DeformableRead]) -> Tensor:
    """Sampling positions ``(B, groups, 2 · h · w)``, pooled to the batch's smallest key grid."""
    height = min(read.key_shape[0] for read in reads)
    width = min(read.key_shape[1] for read in reads)
    fields = [F.adaptive_avg_pool2d(read.position_field(), (height, width)) for read in reads]
    return torch.stack([field.flatten(start_dim=1) for field in fields])


class KnowledgeSteeredFusion(MultimodalModel):
    """Two subspace branches read the slide; their embeddings are fused; see the module docstring."""

    model_name = "ksf"
    no_genomics_message = "ksf needs genomics for its tumour and microenvironment subspaces"

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
        self.hidden_dim = hidden_dim
        self.branch_loss_weight = options.branch_loss_weight
        self.needs_coords = options.grid == "real"
        self.subspaces = {name: list(subspaces[name]) for name in KSF_BRANCHES}
        self.n_genomic = sum(len(columns) for columns in self.subspaces.values())  # the columns it reads
        self.branches = nn.ModuleDict(
            {
                name: SubspaceBranch(
                    n_tiles_dim=n_tiles_dim,
                    n_genes=len(columns),
                    hidden_dim=hidden_dim,
                    dropout=dropout,
                    options=options,
                )
                for name, columns in self.subspaces.items()
            }
        )
        self.branch_heads = nn.ModuleDict({name: TaskHeads(hidden_dim, task_spec) for name in KSF_BRANCHES})
        self.heads = TaskHeads(2 * hidden_dim, task_spec)

    def coordination_heads(self) -> dict[str, nn.Linear]:
        """The fused heads: weight columns ``[:hidden_dim]`` read the tumour branch, the rest the microenvironment."""
        return {task: head for task, head in self.heads.heads.items() if isinstance(head, nn.Linear)}

    def _layouts(self, bags: Sequence[Tensor], coords: CoordsArg) -> list[_Layout | None]:
        if self.options.grid == "pseudo":
            return [
                _Layout(grid=grid, token_tiles=tiles) if bag.shape[0] else None
                for bag in bags
                for grid, tiles in [pseudo_grid(max(bag.shape[0], 1), self.options.pseudo_side)]
            ]
        coord_list = as_coords_list(coords, bags)
        return [_Layout(grid=tile_grid(xy), token_tiles=None) if xy.shape[0] else None for xy in coord_list]

    def half_logits(self, branches: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """Per task, the fused head on each branch alone (its weight half and half its bias), detached."""
        split = self.hidden_dim
        halves: dict[str, tuple[Tensor, Tensor]] = {}
        with torch.no_grad():
            for task, head in self.coordination_heads().items():
                bias = head.bias / 2 if head.bias is not None else 0.0
                tumour = branches["tumour"] @ head.weight[:, :split].t() + bias
                micro = branches["microenvironment"] @ head.weight[:, split:].t() + bias
                halves[task] = (tumour.detach(), micro.detach())
        return halves

    def compute(self, inputs: ModelInputs) -> dict[str, Any]:
        """Task logits, tile attention, embedding, consistency loss, branch embeddings and logits."""
        assert inputs.genomics is not None
        bag_list, genomic_batch = inputs.bags, inputs.genomics
        layouts = self._layouts(bag_list, inputs.coords)
        outputs = {
            name: self.branches[name](bag_list, layouts, select_columns(genomic_batch, columns))
            for name, columns in self.subspaces.items()
        }
        consistency = []
        with_tiles = [index for index, layout in enumerate(layouts) if layout is not None]
        for output in outputs.values():
            reads = [read for read in output.reads if read is not None]
            if len(reads) >= 2:
                consistency.append(gene_guided_consistency(output.genes[with_tiles], position_features(reads)))
            else:
                consistency.append(output.embedding.sum() * 0.0)
        branches = {name: output.embedding for name, output in outputs.items()}
        embedding = torch.cat([branches[name] for name in KSF_BRANCHES], dim=1)
        attention = [
            sum(outputs[name].attention[index] for name in KSF_BRANCHES) / len(KSF_BRANCHES)
            for index in range(len(bag_list))
        ]
        return {
            **self.heads(embedding),
            "attention": attention,
            "embedding": embedding,
            "aux_losses": {"consistency": torch.stack(consistency).mean()},
            "branches": branches,
            "branch_logits": {name: self.branch_heads[name](branches[name]) for name in KSF_BRANCHES},
            "half_logits": self.half_logits(branches),
        }


@register_model("ksf")
def build_ksf(
    *,
    dims: InputDims,
    task_spec: TaskSpec,
    hidden_dim: int = 128,
    dropout: float = 0.25,
    **options: Any,
) -> KnowledgeSteeredFusion:
    """Builder for ``ksf``; needs the ``tumour`` and ``microenvironment`` genomic subspaces."""
    known = {name for name in KSFOptions.__dataclass_fields__}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"model 'ksf' has no option(s) {unknown}.",
            fix=f"use only {sorted(known)} in training.model_options.ksf.",
        )
    ksf_options = KSFOptions(**options)
    missing = [name for name in KSF_BRANCHES if not dims.subspaces.get(name)]
    if missing:
        raise ConfigError(
            f"model 'ksf' needs the genomic subspace(s) {missing}, which are not defined.",
            fix="assign genes to the 'tumour' and 'microenvironment' subspaces in the gene table.",
        )
    if hidden_dim % ksf_options.offset_groups:
        raise ConfigError(
            f"ksf: hidden_dim {hidden_dim} is not divisible by offset_groups {ksf_options.offset_groups}.",
            fix="choose offset_groups dividing hidden_dim.",
        )
    return KnowledgeSteeredFusion(
        n_tiles_dim=dims.n_tiles_dim,
        subspaces=dims.subspaces,
        task_spec=task_spec,
        hidden_dim=hidden_dim,
        dropout=dropout,
        options=ksf_options,
    )

"""``bidistill``: bidirectional distillation between a slides + clinical branch and a slides-only branch,
and its comparator ``mm_impute``.

``bidistill`` holds two branches with their own parameters:

* multi-modal: ABMIL over the tiles ⊕ MLP over the clinical features → fusion MLP → task heads;
* slides only: ABMIL over the tiles → MLP → task heads.

A patient whose clinical data are present (``clinical_present``, default: all present when
``clinical`` is given, none otherwise) gets the multi-modal branch's logits; the others get the
slides-only branch's, so clinical data can be missing, really or withheld, at any rate. Whatever a
missing patient's clinical values are, they never reach the output. The training engine trains the
multi-modal branch's heads on the patients with clinical data only (``clinical_branches``) and the
slides-only branch's heads on every patient.

``aux_losses``, both over the patients with both modalities only, teachers detached
(:class:`DistillOptions` weighs their terms; a direction whose weights are all 0 is left out):

* ``distill_single_from_multi`` (the slides-only branch learns the multi-modal knowledge):
  ``logit_weight`` × the temperature-softened divergence of the slides-only logits from the
  multi-modal logits (:func:`histofuse.losses.distillation_loss`) + ``feature_weight`` × the MSE
  between the two branches' embeddings;
* ``distill_multi_from_single`` (the multi-modal branch keeps slide features that stand on their
  own): ``slide_feature_weight`` × the MSE between the multi-modal branch's slide features and the
  slides-only branch's.

``mm_impute`` is the multi-modal branch alone, trained without distillation: a missing patient's
clinical values are replaced by zeros (the training mean after scaling) and a missing-indicator
input is set to 1.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from histofuse.errors import ConfigError
from histofuse.losses import DistillationKind, distillation_loss
from histofuse.models.base import ModelInputs, MultimodalModel
from histofuse.models.inputs import as_presence_mask
from histofuse.models.layers import TaskHeads, mlp
from histofuse.models.mil import GatedAttentionMIL
from histofuse.models.registry import InputDims, TaskSpec, register_model

__all__ = [
    "BidirectionalDistillation",
    "BranchOutput",
    "ClinicalFusionBranch",
    "DistillOptions",
    "ImputedClinicalFusion",
    "SlideBranch",
]



@dataclass(frozen=True, kw_only=True)
class DistillOptions:
    """Options of ``bidistill`` (``training.model_options.bidistill``).

    Attributes:
        temperature: softening temperature of the logit distillation (> 0).
        logit_weight: weight of the softened-logit divergence in ``distill_single_from_multi`` (>= 0).
        feature_weight: weight of the embedding MSE in ``distill_single_from_multi`` (>= 0).
        slide_feature_weight: weight of the slide-feature MSE, ``distill_multi_from_single`` (>= 0).
    """

    temperature: float = 2.0
    logit_weight: float = 1.0
    feature_weight: float = 1.0
    slide_feature_weight: float = 1.0

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            name, strict = item.name, item.name == "temperature"
            value = getattr(self, name)
            wanted = f"a number {'>' if strict else '>='} 0"
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
                or (strict and value == 0)
            ):
                raise ConfigError(
                    f"setting 'training.model_options.bidistill.{name}' must be {wanted}, got {value!r}.",
                    fix=f"set {name} to {wanted} (default {item.default}).",
                )
            object.__setattr__(self, name, float(value))

    @property
    def single_from_multi(self) -> bool:
        """Whether the slides-only branch learns from the multi-modal one."""
        return self.logit_weight > 0 or self.feature_weight > 0

    @property
    def multi_from_single(self) -> bool:
        """Whether the multi-modal branch learns from the slides-only one."""
        return self.slide_feature_weight > 0


@dataclass(frozen=True, kw_only=True)
class BranchOutput:
    """One branch's results: logits per task, ``(B, H)`` embedding and slide features, tile attention."""

    logits: dict[str, Tensor]
    embedding: Tensor
    slide_features: Tensor
    attention: list[Tensor]


class SlideBranch(nn.Module):
    """ABMIL over the tiles → MLP → task heads."""

    def __init__(self, *, n_tiles_dim: int, task_spec: TaskSpec, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.mil = GatedAttentionMIL(in_dim=n_tiles_dim, hidden_dim=hidden_dim, dropout=dropout)
        self.encoder = mlp(hidden_dim, hidden_dim, dropout, n_layers=1)
        self.heads = TaskHeads(hidden_dim, task_spec)

    def forward(self, bags: Sequence[Tensor]) -> BranchOutput:
        """Branch output for a list of bags."""
        slide, attention = self.mil.forward_bags(bags)
        embedding = self.encoder(slide)
        return BranchOutput(
            logits=self.heads(embedding), embedding=embedding, slide_features=slide, attention=attention
        )


class ClinicalFusionBranch(nn.Module):
    """ABMIL over the tiles ⊕ MLP over ``n_inputs`` clinical inputs → fusion MLP → task heads."""

    def __init__(
        self, *, n_tiles_dim: int, n_inputs: int, task_spec: TaskSpec, hidden_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.mil = GatedAttentionMIL(in_dim=n_tiles_dim, hidden_dim=hidden_dim, dropout=dropout)
        self.clinical_encoder = mlp(n_inputs, hidden_dim, dropout, n_layers=2)
        self.fusion = mlp(2 * hidden_dim, hidden_dim, dropout, n_layers=2)
        self.heads = TaskHeads(hidden_dim, task_spec)

    def forward(self, bags: Sequence[Tensor], clinical: Tensor) -> BranchOutput:
        """Branch output for a list of bags and their ``(B, n_inputs)`` clinical inputs."""
        slide, attention = self.mil.forward_bags(bags)
        clinical_features = self.clinical_encoder(clinical.to(slide.dtype))
        embedding = self.fusion(torch.cat([slide, clinical_features], dim=1))
        return BranchOutput(
            logits=self.heads(embedding), embedding=embedding, slide_features=slide, attention=attention
        )


def _clinical_inputs(inputs: ModelInputs, n_clinical: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Clinical values with missing patients' rows zeroed ``(B, C)``, and the presence mask ``(B,)``."""
    table, batch_size = inputs.clinical, inputs.batch_size
    mask = as_presence_mask(inputs.clinical_present, batch_size, default=table is not None, device=device)
    if table is None:
        if bool(mask.any()):
            raise ValueError("clinical_present marks patients as present, but no clinical tensor was given")
        return torch.zeros(batch_size, n_clinical, device=device), mask
    table = table.to(device=device, dtype=torch.float32)
    return torch.where(mask.unsqueeze(1), table, torch.zeros_like(table)), mask


def _distillation_kind(task_spec: TaskSpec, task: str) -> DistillationKind:
    kind = task_spec.loss_kind(task)
    if kind == "cross_entropy":
        return "softmax"
    if kind == "cox":
        return "risk"
    return "sigmoid"


class BidirectionalDistillation(MultimodalModel):
    """Multi-modal and slides-only branches with distillation both ways; see the module docstring.

    Its task logits are routed from one branch or the other, so it is trained on each branch's
    own logits (``branch_logits``) rather than on the routed ones (``routes_branches``), the
    multi-modal branch's on the patients with clinical data only (``clinical_branches``).
    """

    model_name = "bidistill"
    reads_clinical = True
    routes_branches: bool = True
    clinical_branches: frozenset[str] = frozenset({"multimodal"})

    def __init__(
        self,
        *,
        n_tiles_dim: int,
        n_clinical: int,
        task_spec: TaskSpec,
        hidden_dim: int,
        dropout: float,
        options: DistillOptions,
    ) -> None:
        super().__init__()
        self.task_spec = task_spec
        self.n_clinical = n_clinical
        self.options = options
        self.multimodal = ClinicalFusionBranch(
            n_tiles_dim=n_tiles_dim,
            n_inputs=n_clinical,
            task_spec=task_spec,
            hidden_dim=hidden_dim,
            dropout=dropout,
        )
        self.slide_only = SlideBranch(
            n_tiles_dim=n_tiles_dim, task_spec=task_spec, hidden_dim=hidden_dim, dropout=dropout
        )

    def compute(self, inputs: ModelInputs) -> dict[str, Any]:
        """Routed task logits, attention, embedding, distillation losses and both branches' outputs."""
        bag_list = inputs.bags
        clinical_in, present = _clinical_inputs(inputs, self.n_clinical, self.multimodal.mil.missing.device)
        multi = self.multimodal(bag_list, clinical_in)
        single = self.slide_only(bag_list)
        route = present.unsqueeze(1)
        outputs: dict[str, Any] = {
            task: torch.where(route, multi.logits[task], single.logits[task]) for task in self.task_spec.tasks
        }
        outputs["embedding"] = torch.where(route, multi.embedding, single.embedding)
        outputs["attention"] = [
            multi_weights if bool(is_present) else single_weights
            for multi_weights, single_weights, is_present in zip(
                multi.attention, single.attention, present, strict=True
            )
        ]
        outputs["aux_losses"] = self._distillation(multi, single, present)
        outputs["branches"] = {"multimodal": multi.embedding, "slide_only": single.embedding}
        outputs["branch_logits"] = {"multimodal": multi.logits, "slide_only": single.logits}
        return outputs

    def _distillation(self, multi: BranchOutput, single: BranchOutput, present: Tensor) -> dict[str, Tensor]:
        """The distillation terms over the patients with both modalities (zero without any)."""
        options = self.options
        losses: dict[str, Tensor] = {}
        if options.single_from_multi:
            logit_terms = sum(
                (
                    distillation_loss(
                        single.logits[task],
                        multi.logits[task],
                        kind=_distillation_kind(self.task_spec, task),
                        temperature=options.temperature,
                        mask=present,
                    )
                    for task in self.task_spec.tasks
                ),
                start=single.embedding.new_zeros(()),
            )
            feature_term = _masked_mse(single.embedding, multi.embedding.detach(), present)
            losses["distill_single_from_multi"] = (
                options.logit_weight * logit_terms + options.feature_weight * feature_term
            )
        if options.multi_from_single:
            slide_term = _masked_mse(multi.slide_features, single.slide_features.detach(), present)
            losses["distill_multi_from_single"] = options.slide_feature_weight * slide_term
        return losses


def _masked_mse(student: Tensor, teacher: Tensor, rows: Tensor) -> Tensor:
    """MSE over the rows ``rows``; a zero that keeps the graph when no row is selected."""
    if bool(rows.any()):
        return F.mse_loss(student[rows], teacher[rows])
    return student.sum() * 0.0


class ImputedClinicalFusion(MultimodalModel):
    """Slides + clinical with zero-imputed missing clinical data and a missing indicator (``mm_impute``)."""

    model_name = "mm_impute"
    reads_clinical = True

    def __init__(
        self, *, n_tiles_dim: int, n_clinical: int, task_spec: TaskSpec, hidden_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.n_clinical = n_clinical
        self.branch = ClinicalFusionBranch(
            n_tiles_dim=n_tiles_dim,
            n_inputs=n_clinical + 1,
            task_spec=task_spec,
            hidden_dim=hidden_dim,
            dropout=dropout,
        )

    def compute(self, inputs: ModelInputs) -> dict[str, Any]:
        """Task logits, attention and embedding; missing clinical rows enter as zeros + indicator 1."""
        clinical_in, present = _clinical_inputs(inputs, self.n_clinical, self.branch.mil.missing.device)
        indicator = (~present).to(clinical_in.dtype).unsqueeze(1)
        result = self.branch(inputs.bags, torch.cat([clinical_in, indicator], dim=1))
        return {**result.logits, "attention": result.attention, "embedding": result.embedding}


def _require_clinical(name: str, n_clinical: int) -> None:
    if n_clinical < 1:
        raise ConfigError(
            f"model '{name}' fuses slides with clinical data, but no clinical feature is available.",
            fix="provide a clinical table, or train 'abmil' for slides only.",
        )


@register_model("bidistill")
def build_bidistill(
    *,
    dims: InputDims,
    task_spec: TaskSpec,
    hidden_dim: int = 128,
    dropout: float = 0.25,
    temperature: float = 2.0,
    logit_weight: float = 1.0,
    feature_weight: float = 1.0,
    slide_feature_weight: float = 1.0,
) -> BidirectionalDistillation:
    """Builder for ``bidistill`` (slides + clinical; genomics unused); options: :class:`DistillOptions`."""
    options = DistillOptions(
        temperature=temperature,
        logit_weight=logit_weight,
        feature_weight=feature_weight,
        slide_feature_weight=slide_feature_weight,
    )
    _require_clinical("bidistill", dims.n_clinical)
    return BidirectionalDistillation(
        n_tiles_dim=dims.n_tiles_dim,
        n_clinical=dims.n_clinical,
        task_spec=task_spec,
        hidden_dim=hidden_dim,
        dropout=dropout,
        options=options,
    )


@register_model("mm_impute")
def build_mm_impute(
    *,
    dims: InputDims,
    task_spec: TaskSpec,
    hidden_dim: int = 128,
    dropout: float = 0.25,
) -> ImputedClinicalFusion:
    """Builder for ``mm_impute`` (slides + zero-imputed clinical with a missing indicator)."""
    _require_clinical("mm_impute", dims.n_clinical)
    return ImputedClinicalFusion(
        n_tiles_dim=dims.n_tiles_dim,
        n_clinical=dims.n_clinical,
        task_spec=task_spec,
        hidden_dim=hidden_dim,
        dropout=dropout,
    )

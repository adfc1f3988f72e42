"""The training objective: per-task losses of a forward batch, normalised to the optimiser step's mean.

A step covers ``grad_accum`` bags split into forward batches of ``batch_size``. For the separable
losses (cross-entropy, binary cross-entropy, discrete-time survival NLL) each batch contributes the
*sum* of its labelled patients' losses divided by the step's number of labelled patients (with
class weights: by the step's sum of the labelled patients' weights), so the accumulated gradient is
exactly that of the step's mean, whatever the batch size. The Cox partial likelihood is not
separable: each batch contributes its summed partial likelihood divided by the step's number of
events. The models' auxiliary losses (batch means) are weighted by the batch's share of the step.

The loss of a task follows :meth:`histofuse.models.registry.TaskSpec.loss_kind`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from histofuse.losses import cox_partial_nll, masked_bce, masked_cross_entropy, risk_from_logits, survival_nll
from histofuse.models.gradient_coordination import classification_confidence, survival_confidence
from histofuse.models.registry import TaskSpec
from histofuse.training.data import FoldData
from histofuse.training.settings import TrainSettings

__all__ = ["Objective", "balanced_class_weights"]


def balanced_class_weights(target: Tensor, n_classes: int) -> Tensor:
    """Inverse-frequency class weights ``n / (K · count_k)`` of the labelled targets (0 for absent classes)."""
    labelled = target[target >= 0].long()
    counts = torch.bincount(labelled, minlength=n_classes).double()
    weights = torch.where(counts > 0, labelled.numel() / (n_classes * counts.clamp(min=1)), 0.0)
    return weights.float()


@dataclass(frozen=True, kw_only=True, eq=False)
class Objective:
    """Losses of one model on one fold (see the module docstring)."""

    data: FoldData
    settings: TrainSettings
    task_spec: TaskSpec
    class_weights: dict[str, Tensor]

    @classmethod
    def for_fold(cls, data: FoldData, settings: TrainSettings, task_spec: TaskSpec) -> Objective:
        weights: dict[str, Tensor] = {}
        if settings.class_weights == "balanced":
            train = torch.from_numpy(data.indices("train"))
            for task in task_spec.tasks:
                if task_spec.loss_kind(task) == "cross_entropy":
                    weights[task] = balanced_class_weights(data.targets[task][train], task_spec.classes(task))
        return cls(data=data, settings=settings, task_spec=task_spec, class_weights=weights)

    def denominators(self, indices: npt.NDArray[np.int64]) -> dict[str, float]:
        """Per task, what a step over ``indices`` divides its summed loss by (0: nothing labelled)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        result: dict[str, float] = {}
        for task in self.task_spec.tasks:
            mask = self.data.mask(task)[index]
            kind = self.task_spec.loss_kind(task)
            if kind == "cox":
                events = torch.as_tensor(self.data.event.to_numpy(dtype=np.float64, na_value=0.0))[index]
                result[task] = float((events * mask).sum())
            elif kind == "cross_entropy" and task in self.class_weights:
                target = self.data.targets[task][index]
                result[task] = float(self.class_weights[task][target.clamp(min=0)][mask].sum())
            else:
                result[task] = float(mask.sum())
        return result

    def task_loss(self, task: str, logits: Tensor, indices: npt.NDArray[np.int64]) -> Tensor:
        """Summed loss of ``task`` over the labelled patients ``indices`` (rows of ``logits``)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        logits = logits.float()
        kind = self.task_spec.loss_kind(task)
        if kind == "cross_entropy":
            return masked_cross_entropy(
                logits, self.data.targets[task][index], weight=self.class_weights.get(task), reduction="sum"
            )
        if kind == "bce":
            return masked_bce(logits, self.data.targets[task][index], reduction="sum")
        if kind == "survival_nll":
            return survival_nll(
                logits,
                self.data.survival_bin[index],
                self.data.censored[index],
                alpha=self.settings.alpha_surv,
                reduction="sum",
            )
        time, event, mask = self._survival_labels(index)
        return cox_partial_nll(logits, time.to(logits.device), event.to(logits.device), mask.to(logits.device), reduction="sum")

    def _survival_labels(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        time = torch.from_numpy(self.data.survival_time)[index]
        event = torch.as_tensor(self.data.event.to_numpy(dtype=np.float64, na_value=np.nan))[index]
        return time, event, self.data.mask("survival")[index]

    def heads_loss(
        self, logits: Mapping[str, Tensor], indices: npt.NDArray[np.int64], denominators: Mapping[str, float]
    ) -> Tensor:
        """``sum_task weight · summed loss / step denominator`` for one forward batch."""
        device = logits[self.task_spec.tasks[0]].device
        total = torch.zeros((), device=device)
        for task in self.task_spec.tasks:
            if denominators[task] > 0:
                loss = self.task_loss(task, logits[task], indices)
                total = total + self.settings.task_weight(task) * loss / denominators[task]
        return total

    def aux_loss(self, outputs: Mapping[str, Any], batch_share: float) -> Tensor | None:
        """The model's weighted auxiliary losses times the batch's share of the step (None without)."""
        aux = outputs.get("aux_losses") or {}
        if not aux:
            return None
        return sum(
            (self.settings.aux_weight(name) * value.float() * batch_share for name, value in aux.items()),
            start=torch.zeros((), device=next(iter(aux.values())).device),
        )

    def task_confidence(self, task: str, logits: Tensor, indices: npt.NDArray[np.int64]) -> float:
        """Confidence of ``logits`` for ``task`` on ``indices``: true-class probability or concordance (NaN if undefined)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        kind = self.task_spec.loss_kind(task)
        task_logits = logits.detach().float().cpu()
        if kind in ("cross_entropy", "bce"):
            target = self.data.targets[task][index]
            return classification_confidence(task_logits, target, target >= 0)
        risk = task_logits.reshape(-1) if kind == "cox" else risk_from_logits(task_logits)
        time, event, mask = self._survival_labels(index)
        return survival_confidence(risk, time, event, mask)

    def confidence(self, logits: Mapping[str, Tensor], indices: npt.NDArray[np.int64]) -> float:
        """Mean over tasks of :meth:`task_confidence`; NaN ones left out, 0.5 when none is defined."""
        values = [self.task_confidence(task, logits[task], indices) for task in self.task_spec.tasks]
        finite = [value for value in values if math.isfinite(value)]
        return float(np.mean(finite)) if finite else 0.5

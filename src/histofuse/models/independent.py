"""Train each task through its own copy of a model: no parameter is shared between tasks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from histofuse.models.registry import TaskSpec

__all__ = ["IndependentTaskModels"]


class IndependentTaskModels(nn.Module):
    """One model per task, built by ``build(single_task_spec)``; outputs merged into one dict.

    Each task's logits come from its own model; ``"embedding"`` concatenates the per-task
    embeddings (in task order), ``"attention"`` averages the per-task tile weights, and auxiliary
    losses of the same name are summed over the task models.
    """

    def __init__(self, task_spec: TaskSpec, build: Callable[[TaskSpec], nn.Module]) -> None:
        super().__init__()
        self.task_spec = task_spec
        self.models = nn.ModuleDict({task: build(task_spec.only(task)) for task in task_spec.tasks})

    def forward(
        self,
        bags: Tensor | Sequence[Tensor] | None,
        genomics: Tensor | None = None,
        clinical: Tensor | None = None,
        coords: Tensor | Sequence[Tensor] | None = None,
        *,
        clinical_present: Tensor | None = None,
    ) -> dict[str, Any]:
        """Run every task's model on the same inputs and merge their outputs."""
        per_task = {
            task: model(bags, genomics, clinical, coords, clinical_present=clinical_present)
            for task, model in self.models.items()
        }
        outputs: dict[str, Any] = {task: result[task] for task, result in per_task.items()}
        results = list(per_task.values())
        outputs["embedding"] = torch.cat([result["embedding"] for result in results], dim=1)
        outputs["attention"] = [
            torch.stack(list(weights)).mean(dim=0)
            for weights in zip(*(result["attention"] for result in results), strict=True)
        ]
        aux: dict[str, Tensor] = {}
        for result in results:
            for name, value in result.get("aux_losses", {}).items():
                aux[name] = aux[name] + value if name in aux else value
        if aux:
            outputs["aux_losses"] = aux
        return outputs

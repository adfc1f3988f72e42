"""Early stopping per task for a model that trains one independent copy per task (``m2f_separate``).

Such a model (:class:`histofuse.models.independent.IndependentTaskModels`) shares no parameter
between tasks, so each task's copy is selected on its own: after every epoch each copy still
training is scored on the validation part by its own task (the task's loss with ``monitor: loss``,
else its AUC, or its c-index for survival); its best epoch's weights are kept, and after
``patience`` epochs without improvement the copy stops (its parameters no longer get gradients).
The run ends when every copy has stopped. Progress lives in the run's resumable state
(:class:`histofuse.training.state.RunState`, ``tasks``), so a resumed run continues per task.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from histofuse.models.independent import IndependentTaskModels
from histofuse.training.state import RunState

logger = logging.getLogger(__name__)

__all__ = ["finish_task_copies", "freeze_stopped", "select_task_copies", "task_copies"]


def task_copies(model: nn.Module) -> IndependentTaskModels | None:
    """The model when it trains one independent copy per task, else None."""
    return model if isinstance(model, IndependentTaskModels) else None


def _progress(state: RunState, task: str) -> dict[str, Any]:
    return state.tasks.setdefault(task, {"best_score": -math.inf, "best_epoch": 0, "stale": 0, "stopped": False})


def _keep(state: RunState, model: IndependentTaskModels, task: str) -> None:
    """Copy the current weights of ``task``'s copy into the best state."""
    prefix = f"models.{task}."
    best = state.best_model if state.best_model is not None else {}
    for name, value in model.state_dict().items():
        if name.startswith(prefix):
            best[name] = value.detach().cpu().clone()
    state.best_model = best


def select_task_copies(
    state: RunState,
    model: IndependentTaskModels,
    epoch: int,
    scores: Mapping[str, float] | None,
    *,
    patience: int,
    description: str,
) -> None:
    """Update each copy's best epoch and early stopping after ``epoch``.

    ``scores``: higher-is-better validation score per task (NaN: undefined this epoch); None when
    there is no labelled validation patient (every epoch is then the best).
    """
    for task in model.models:
        progress = _progress(state, task)
        if progress["stopped"]:
            continue
        score = None if scores is None else float(scores[task])
        if score is None or (math.isfinite(score) and score > progress["best_score"]):
            _keep(state, model, task)
            progress.update(best_epoch=epoch, stale=0)
            if score is not None:
                progress["best_score"] = score
            continue
        progress["stale"] += 1
        if patience and progress["stale"] >= patience:
            progress["stopped"] = True
            model.models[task].requires_grad_(False)
            logger.info("%s: %s copy stops at epoch %d (best epoch %d)", description, task, epoch, progress["best_epoch"])
    state.best_epoch = max(progress["best_epoch"] for progress in state.tasks.values())
    state.stopped = all(progress["stopped"] for progress in state.tasks.values())


def freeze_stopped(state: RunState, model: IndependentTaskModels) -> None:
    """On resuming: the copies that had stopped get no gradient again."""
    for task, progress in state.tasks.items():
        if progress["stopped"]:
            model.models[task].requires_grad_(False)


def finish_task_copies(state: RunState, model: IndependentTaskModels, description: str) -> None:
    """Complete the best state: a copy never scored keeps its last epoch (with a warning)."""
    for task in model.models:
        progress = _progress(state, task)
        if progress["best_epoch"] == 0:
            logger.warning("%s: the %s copy was never scored on validation; keeping its last epoch", description, task)
            _keep(state, model, task)
            progress["best_epoch"] = state.epoch
    state.best_epoch = max(progress["best_epoch"] for progress in state.tasks.values())
    logger.info(
        "%s: best epoch per task: %s",
        description,
        ", ".join(f"{task} {progress['best_epoch']}" for task, progress in state.tasks.items()),
    )

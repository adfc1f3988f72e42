"""Early stopping per task for a model with one independent copy per task (``m2f_separate``)."""

from __future__ import annotations

import math

import torch

from histofuse.models import IndependentTaskModels, InputDims, TaskSpec, build_model
from histofuse.training.selection import finish_task_copies, freeze_stopped, select_task_copies
from histofuse.training.state import RunState

SPEC = TaskSpec(tasks=("grade", "survival"), n_classes={"grade": 2}, n_bins=3)


def _copies() -> IndependentTaskModels:
    torch.manual_seed(0)
    model = build_model(
        "m2f_separate", InputDims(n_tiles_dim=6, n_genomic=6, gene_groups=[[0, 1, 2], [3, 4, 5]]), task_spec=SPEC,
        hidden_dim=8, dropout=0.0, n_heads=2,
    )
    assert isinstance(model, IndependentTaskModels)
    return model


def _mark(model: IndependentTaskModels, epoch: int) -> None:
    """Stand-in for an epoch of training: every weight becomes the epoch number."""
    with torch.no_grad():
        for copy in model.models.values():
            for parameter in copy.parameters():
                if parameter.requires_grad:  # a stopped copy is not trained any more
                    parameter.fill_(float(epoch))


def _epochs_of(best: dict[str, torch.Tensor], task: str) -> set[float]:
    return {float(value.flatten()[0]) for name, value in best.items() if name.startswith(f"models.{task}.") and value.is_floating_point() and value.numel()}


def test_each_copy_stops_on_its_own_validation_score() -> None:
    model, state = _copies(), RunState(fingerprint="test")
    # grade improves every epoch; survival is best at epoch 1, then worse (patience 2)
    grade = [0.60, 0.70, 0.80, 0.90, 0.95]
    survival = [0.70, 0.65, 0.60, 0.55, 0.50]
    for epoch, scores in enumerate(zip(grade, survival, strict=True), start=1):
        _mark(model, epoch)
        select_task_copies(state, model, epoch, dict(zip(("grade", "survival"), scores, strict=True)), patience=2, description="t")
        state.epoch = epoch
        if epoch == 3:
            assert state.tasks["survival"]["stopped"] and not state.tasks["grade"]["stopped"]
            assert not any(p.requires_grad for p in model.models["survival"].parameters())
            assert all(p.requires_grad for p in model.models["grade"].parameters())
            assert not state.stopped
    finish_task_copies(state, model, "t")
    assert state.tasks["grade"]["best_epoch"] == 5 and state.tasks["survival"]["best_epoch"] == 1
    assert _epochs_of(state.best_model, "grade") == {5.0}
    assert _epochs_of(state.best_model, "survival") == {1.0}
    assert state.best_epoch == 5
    model.load_state_dict(state.best_model)  # a complete state of the whole model


def test_run_stops_when_every_copy_has_stopped_and_resumes_frozen() -> None:
    model, state = _copies(), RunState(fingerprint="test")
    for epoch, score in enumerate([0.5, 0.4, math.nan], start=1):
        _mark(model, epoch)
        select_task_copies(state, model, epoch, {"grade": score, "survival": score}, patience=2, description="t")
    assert state.stopped and state.best_epoch == 1  # a NaN score is no improvement
    resumed = _copies()
    freeze_stopped(state, resumed)
    assert not any(p.requires_grad for p in resumed.parameters())


def test_without_validation_every_epoch_is_the_best_and_a_never_scored_copy_keeps_its_last_epoch() -> None:
    model, state = _copies(), RunState(fingerprint="test")
    for epoch in (1, 2):
        _mark(model, epoch)
        select_task_copies(state, model, epoch, None, patience=1, description="t")
        state.epoch = epoch
    assert _epochs_of(state.best_model, "grade") == {2.0} and not state.stopped
    model, state = _copies(), RunState(fingerprint="test")
    for epoch in (1, 2):
        _mark(model, epoch)
        select_task_copies(state, model, epoch, {"grade": 0.5 + epoch, "survival": math.nan}, patience=0, description="t")
        state.epoch = epoch
    finish_task_copies(state, model, "t")
    assert state.tasks["survival"]["best_epoch"] == 2 and _epochs_of(state.best_model, "survival") == {2.0}

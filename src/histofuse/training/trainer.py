"""Train one registered model on one fold and predict every patient of the fold.

Training: AdamW or Adam (``optimizer``) with a per-epoch learning-rate schedule (constant or cosine, optional linear
warm-up). An optimiser step covers ``grad_accum`` labelled training patients in random order, fed
to the model ``batch_size`` bags per forward pass (each bag at most ``max_tiles`` random tiles, with
their coordinates, read from disk when needed); the step's loss is ``sum_task weight_task ·
mean_task`` plus the model's weighted auxiliary losses, and accumulation gives exactly the step's
mean (:mod:`histofuse.training.objective`). Every forward pass (training, validation, prediction)
gets each patient's real clinical presence (``FoldData.clinical_present``). Each branch's own heads
(``branch_logits``) are trained too: ``bidistill``, whose outputs are routed from its branches, on
its branches' logits alone, a branch named in the model's ``clinical_branches`` on the patients
with clinical data only; other models weight their branch heads' losses by their
``branch_loss_weight`` (``ksf``: 0 by default). For a model with ``coordination_heads`` (``ksf``)
and ``coordination`` other than ``none``, the accumulated gradient of each fused head's weight is
coordinated before the step (:func:`histofuse.models.gradient_coordination.coordinate_rows`), with
each branch's confidence measured on the step's patients from the model's ``half_logits``. On CUDA
the forward pass runs under bf16 autocast (``precision``).

Model selection: after each epoch the validation patients are predicted with full bags (eval
mode, each patient's real clinical presence) and scored by ``monitor``: the loss (lower is
better), the AUC of the first classification or binary task, or the survival c-index. The best
epoch is kept; training stops after ``patience`` epochs without improvement. When no validation
patient has a label, all epochs run and the last one is kept. A model with one independent copy per
task (``m2f_separate``) is selected per task (:mod:`histofuse.training.selection`).

Resuming: with a ``state`` path the run's last-epoch state is written after every epoch
(:mod:`histofuse.training.state`); a later run with matching settings and inputs continues from it.

Outputs (each written atomically): a checkpoint loadable with ``torch.load(weights_only=True)``
(see :func:`load_trained_model`), a predictions parquet for the fold's train, val and test patients,
and optionally a per-epoch history TSV.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm import tqdm

from histofuse import metrics
from histofuse.errors import ConfigError, HistofuseError, WeightsError
from histofuse.io import atomic_path
from histofuse.left_out import write_predictions
from histofuse.losses import risk_from_logits
from histofuse.models.gradient_coordination import coordinate_rows
from histofuse.models.registry import (
    CLASSIFICATION_TASKS,
    SLIDES_ONLY_MODELS,
    InputDims,
    TaskSpec,
    build_model,
)
from histofuse.training.bags import Bag
from histofuse.training.data import FoldData, load_fold_for
from histofuse.training.objective import Objective
from histofuse.training.selection import finish_task_copies, freeze_stopped, select_task_copies, task_copies
from histofuse.training.settings import TrainSettings, check_min_batch
from histofuse.training.state import RunState, capture_rng, fingerprint, load_state, restore_rng, save_state

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FORMAT", "infer", "load_trained_model", "predict_fold", "prediction_table", "task_auc", "train_fold"]

CHECKPOINT_FORMAT = "histofuse-model/1"


@contextlib.contextmanager
def _reproducible(seed: int) -> Iterator[None]:
    """Seed every generator and switch torch to deterministic kernels for the duration."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _autocast(settings: TrainSettings, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    dtype = settings.autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _task_spec(data: FoldData, settings: TrainSettings) -> TaskSpec:
    n_classes = {task: len(data.class_names[task]) for task in settings.tasks if task in CLASSIFICATION_TASKS}
    return TaskSpec(
        tasks=settings.tasks, n_classes=n_classes, n_bins=settings.n_bins, survival_loss=settings.survival_loss
    )


def _forward(
    model: nn.Module,
    data: FoldData,
    indices: npt.NDArray[np.int64],
    bags: Sequence[Bag],
    device: torch.device,
    settings: TrainSettings,
    *,
    clinical: Tensor | None = None,
    clinical_present: Tensor | None = None,
) -> dict[str, Any]:
    """One forward pass over the patients ``indices`` with their ``bags``.

    ``clinical`` / ``clinical_present`` replace the patients' clinical rows and presence mask; by
    default every model sees the fold's rows and the patients' real presence (``data.clinical_present``).
    """
    index = torch.as_tensor(indices, dtype=torch.long)
    features = [bag.features.to(device=device, dtype=torch.float32) for bag in bags]
    coords = [bag.coords for bag in bags] if all(bag.coords is not None for bag in bags) else None
    table = data.clinical[index] if clinical is None else clinical
    present = data.clinical_present[index] if clinical_present is None else clinical_present
    with _autocast(settings, device):
        return model(
            features,
            data.genomics[index].to(device),
            table.to(device),
            coords,
            clinical_present=present.to(device),
        )


@torch.no_grad()
def infer(
    model: nn.Module,
    data: FoldData,
    indices: Sequence[int] | npt.NDArray[np.int64],
    device: torch.device,
    settings: TrainSettings,
    *,
    clinical: Tensor | None = None,
    clinical_present: Tensor | None = None,
) -> dict[str, Tensor]:
    """Logits per task for ``indices`` with full bags (eval mode, ``batch_size`` at a time), on the CPU.

    ``clinical`` / ``clinical_present``: replacement clinical rows and presence mask, one per index
    (default: the fold's rows and the patients' real presence).
    """
    model.eval()
    indices = np.asarray(indices, dtype=np.int64)
    collected: dict[str, list[Tensor]] = {task: [] for task in data.tasks}
    for start in range(0, len(indices), settings.batch_size):
        chunk = indices[start : start + settings.batch_size]
        part = slice(start, start + len(chunk))
        outputs = _forward(
            model,
            data,
            chunk,
            [data.bags.load(int(i)) for i in chunk],
            device,
            settings,
            clinical=None if clinical is None else clinical[part],
            clinical_present=None if clinical_present is None else clinical_present[part],
        )
        for task in data.tasks:
            collected[task].append(outputs[task].float().cpu())
    return {task: torch.cat(parts) if parts else torch.empty(0) for task, parts in collected.items()}


def _risk(logits: Tensor, spec: TaskSpec) -> Tensor:
    return logits.reshape(-1) if spec.loss_kind("survival") == "cox" else risk_from_logits(logits)


def _validation_score(
    model: nn.Module,
    data: FoldData,
    indices: npt.NDArray[np.int64],
    objective: Objective,
    device: torch.device,
) -> tuple[float, float]:
    """``(loss, score)`` on the validation patients; ``score`` is higher-is-better for ``monitor``."""
    return _scores(infer(model, data, indices, device, objective.settings), data, indices, objective)


def _scores(
    logits: dict[str, Tensor], data: FoldData, indices: npt.NDArray[np.int64], objective: Objective
) -> tuple[float, float]:
    """``(loss, score)`` of the validation ``logits`` (see :func:`_validation_score`)."""
    settings = objective.settings
    loss = float(objective.heads_loss(logits, indices, objective.denominators(indices)))
    if settings.monitor == "loss":
        return loss, -loss
    task = "survival" if settings.monitor == "cindex" else settings.auc_task
    assert task is not None
    return loss, _task_metric(task, logits, data, indices, objective)


def _task_metric(
    task: str, logits: dict[str, Tensor], data: FoldData, indices: npt.NDArray[np.int64], objective: Objective
) -> float:
    """The c-index (survival) or AUC of ``task`` on the labelled ``indices``; NaN when undefined."""
    keep = data.mask(task)[torch.as_tensor(indices)].numpy()
    if task == "survival":
        risk = _risk(logits["survival"], objective.task_spec).numpy()[keep]
        event = data.event.to_numpy(dtype=np.float64, na_value=np.nan)[indices][keep]
        if keep.sum() < 2 or np.nansum(event) < 1:
            return math.nan
        return metrics.cindex(data.survival_time[indices][keep], risk, event)
    target = data.targets[task][torch.as_tensor(indices)].numpy()[keep].astype(np.int64)
    if len(np.unique(target)) < 2:
        return math.nan
    return task_auc(task, logits[task][torch.from_numpy(keep)], target)


def _task_scores(
    logits: dict[str, Tensor], data: FoldData, indices: npt.NDArray[np.int64], objective: Objective
) -> dict[str, float]:
    """Higher-is-better validation score of each task on its own: minus its loss, or its metric."""
    denominators = objective.denominators(indices)
    scores: dict[str, float] = {}
    for task in objective.task_spec.tasks:
        if objective.settings.monitor != "loss":
            scores[task] = _task_metric(task, logits, data, indices, objective)
        elif denominators[task] > 0:
            scores[task] = -float(objective.task_loss(task, logits[task], indices)) / denominators[task]
        else:
            scores[task] = math.nan
    return scores


def task_auc(task: str, logits: Tensor, target: npt.NDArray[np.int64]) -> float:
    """AUC of ``task``'s logits against class indices / 0-1 labels (macro one-vs-rest for classes)."""
    if task == "binary":
        positive = torch.sigmoid(logits.reshape(-1)).numpy().astype(np.float64)
        return metrics.multiclass_auc(target, np.stack([1 - positive, positive], axis=1))
    return metrics.multiclass_auc(target, torch.softmax(logits, dim=1).numpy().astype(np.float64))


def _optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """The optimiser of ``settings.optimizer`` over the model's parameters."""
    kind = torch.optim.Adam if settings.optimizer == "adam" else torch.optim.AdamW
    return kind(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


def _learning_rate(settings: TrainSettings, epoch: int) -> float:
    """Learning rate of epoch ``epoch`` (1-based): linear warm-up, then constant or cosine decay."""
    if epoch <= settings.warmup_epochs:
        return settings.lr * epoch / (settings.warmup_epochs + 1)
    if settings.lr_schedule == "constant":
        return settings.lr
    span = max(1, settings.epochs - settings.warmup_epochs)
    progress = (epoch - settings.warmup_epochs - 1) / span
    return settings.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True, kw_only=True, eq=False)
class _Run:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    data: FoldData
    objective: Objective
    settings: TrainSettings
    device: torch.device
    left_out: frozenset[int] = frozenset()
    """Patients (row indices) the model has no input for: neither trained on nor predicted."""

    @property
    def coordinated(self) -> bool:
        return self.settings.coordination != "none" and hasattr(self.model, "coordination_heads")

    def step(self, chunk: npt.NDArray[np.int64], rng: np.random.Generator) -> float:
        """One optimiser step over the patients ``chunk``; returns the step's loss."""
        settings = self.settings
        denominators = self.objective.denominators(chunk)
        with_clinical = self.objective.denominators(chunk[self.data.clinical_present[torch.as_tensor(chunk)].numpy()])
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        halves: list[dict[str, tuple[Tensor, Tensor]]] = []
        for start in range(0, len(chunk), settings.batch_size):
            batch = chunk[start : start + settings.batch_size]
            bags = [self.data.bags.load(int(i), max_tiles=settings.max_tiles, rng=rng) for i in batch]
            outputs = _forward(self.model, self.data, batch, bags, self.device, settings)
            branch_logits = outputs.get("branch_logits") or {}
            routed = bool(getattr(self.model, "routes_branches", False)) and bool(branch_logits)
            loss = (
                torch.zeros((), device=self.device)
                if routed
                else self.objective.heads_loss(outputs, batch, denominators)
            )
            aux = self.objective.aux_loss(outputs, len(batch) / len(chunk))
            if aux is not None:
                loss = loss + aux
            branch_weight = 1.0 if routed else float(getattr(self.model, "branch_loss_weight", 1.0))
            if branch_weight:
                for name, logits in branch_logits.items():
                    if name in getattr(self.model, "clinical_branches", ()):
                        loss = loss + branch_weight * self._clinical_branch_loss(logits, batch, with_clinical)
                    else:
                        loss = loss + branch_weight * self.objective.heads_loss(logits, batch, denominators)
            if loss.requires_grad:  # False when every patient's task copy has stopped early
                loss.backward()
            step_loss += float(loss.detach())
            if self.coordinated:
                halves.append(outputs["half_logits"])
        if halves:
            self._coordinate(chunk, halves)
        self.optimizer.step()
        return step_loss

    def _coordinate(self, chunk: npt.NDArray[np.int64], halves: list[dict[str, tuple[Tensor, Tensor]]]) -> None:
        """Coordinate each fused head's accumulated weight gradient by the branches' step confidences."""
        model: Any = self.model  # one with coordination_heads (see `coordinated`)
        split = int(model.hidden_dim)
        for task, head in model.coordination_heads().items():
            if head.weight.grad is None:
                continue
            first = torch.cat([batch[task][0] for batch in halves])
            second = torch.cat([batch[task][1] for batch in halves])
            conf_a = self.objective.task_confidence(task, first, chunk)
            conf_b = self.objective.task_confidence(task, second, chunk)
            head.weight.grad.copy_(coordinate_rows(head.weight.grad, split, conf_a, conf_b, self.settings.coordination))

    def _clinical_branch_loss(
        self, logits: dict[str, Tensor], batch: npt.NDArray[np.int64], denominators: dict[str, float]
    ) -> Tensor:
        """A branch that reads clinical data learns from the batch's patients that have them.

        ``denominators`` are the step's over its patients with clinical data, so the step's loss
        is their exact mean.
        """
        rows = self.data.clinical_present[torch.as_tensor(batch, dtype=torch.long)]
        if not bool(rows.any()):
            return torch.zeros((), device=self.device)
        keep = rows.to(self.device)
        kept = {task: value[keep] for task, value in logits.items()}
        return self.objective.heads_loss(kept, batch[rows.numpy()], denominators)

    def epoch(self, train_indices: npt.NDArray[np.int64], rng: np.random.Generator) -> float:
        """One pass over the labelled training patients; returns the mean step loss."""
        self.model.train()
        order = rng.permutation(train_indices)
        losses = [
            self.step(order[start : start + self.settings.grad_accum], rng)
            for start in range(0, len(order), self.settings.grad_accum)
        ]
        return float(np.mean(losses)) if losses else math.nan


def epoch_line(description: str, epoch: int, train_loss: float, val_loss: float, monitor: str, score: float) -> str:
    """One epoch's log line: the losses, and the monitored validation metric unless it is the loss."""
    line = f"{description} epoch {epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f}"
    return line if monitor == "loss" else f"{line}, val {monitor} {score:.4f}"


def _labelled(data: FoldData, split: str, left_out: frozenset[int] = frozenset()) -> npt.NDArray[np.int64]:
    return np.array(
        [i for i in data.indices(split) if data.has_label(int(i)) and int(i) not in left_out], dtype=np.int64
    )


NO_TILE_FEATURES = "no tile features: no slide, or every slide excluded (exclusions.tsv)"
"""Why a slides-only model leaves a patient out."""


def left_out_patients(model_name: str, data: FoldData) -> dict[int, str]:
    """The patients (row index → reason) that ``model_name`` has no input for.

    A slides-only model (:data:`SLIDES_ONLY_MODELS`) has none for a patient without tile features;
    it is neither trained on nor predicted for them, instead of predicting from an empty bag.
    """
    if model_name not in SLIDES_ONLY_MODELS:
        return {}
    return {index: NO_TILE_FEATURES for index in range(data.n_patients) if data.bags.n_tiles(index) == 0}


def _fit(
    run: _Run, description: str, state_path: Path | None, run_fingerprint: str
) -> tuple[dict[str, Tensor], list[dict[str, float]], int, float | None]:
    """Train with early stopping; returns the best state, the history, best epoch and its val loss."""
    data, settings, model = run.data, run.settings, run.model
    rng = np.random.default_rng(settings.seed)
    train_indices = _labelled(data, "train", run.left_out)
    if train_indices.size == 0:
        raise HistofuseError(f"no training patient of fold {data.fold} has a label for tasks {list(settings.tasks)}.")
    val_indices = _labelled(data, "val", run.left_out)
    if val_indices.size == 0:
        logger.warning("fold %d: no labelled validation patient; keeping the last epoch", data.fold)

    state = RunState(fingerprint=run_fingerprint)
    if state_path is not None and settings.resume:
        loaded = load_state(state_path, run_fingerprint)
        if loaded is not None:
            state = loaded
            model.load_state_dict(state.model)
            run.optimizer.load_state_dict(state.optimizer)
            restore_rng(state.rng, rng)
            logger.info("%s: resuming after epoch %d", description, state.epoch)
    copies = task_copies(model)
    if copies is not None:
        freeze_stopped(state, copies)
    progress = tqdm(
        range(state.epoch + 1, settings.epochs + 1), desc=description, unit="epoch", disable=None, leave=False
    )
    for epoch in progress:
        if state.stopped:
            break
        for group in run.optimizer.param_groups:
            group["lr"] = _learning_rate(settings, epoch)
        train_loss = run.epoch(train_indices, rng)
        logits = infer(model, data, val_indices, run.device, settings) if val_indices.size else None
        val_loss, score = (math.nan, math.nan) if logits is None else _scores(logits, data, val_indices, run.objective)
        state.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_score": score})
        progress.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        logger.info("%s", epoch_line(description, epoch, train_loss, val_loss, settings.monitor, score))
        improved = val_indices.size == 0 or (math.isfinite(score) and score > state.best_score)
        if copies is not None:
            task_scores = None if logits is None else _task_scores(logits, data, val_indices, run.objective)
            select_task_copies(state, copies, epoch, task_scores, patience=settings.patience, description=description)
        elif improved:
            state.best_model = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
            state.best_epoch, state.stale = epoch, 0
            if val_indices.size:
                state.best_score = score
        else:
            state.stale += 1
            if settings.patience and state.stale >= settings.patience:
                logger.info("%s: early stop at epoch %d (best epoch %d)", description, epoch, state.best_epoch)
                state.stopped = True
        state.epoch = epoch
        if state_path is not None:
            state.model = {name: value.detach().cpu() for name, value in model.state_dict().items()}
            state.optimizer = run.optimizer.state_dict()
            state.rng = capture_rng(rng)
            save_state(state_path, state)
    if copies is not None:
        finish_task_copies(state, copies, description)
    if state.best_model is None:
        if settings.monitor == "loss" or not state.history:
            raise HistofuseError(
                f"{description}: the validation loss was never finite; training diverged.",
                fix="lower training.lr or check the inputs for extreme values.",
            )
        logger.warning("%s: validation %s never defined; keeping the last epoch", description, settings.monitor)
        state.best_model = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
        state.best_epoch = state.epoch
    best_loss = next((row["val_loss"] for row in state.history if row["epoch"] == state.best_epoch), None)
    return state.best_model, state.history, state.best_epoch, (best_loss if val_indices.size else None)


def predict_fold(
    model: nn.Module,
    data: FoldData,
    *,
    model_name: str,
    device: torch.device,
    settings: TrainSettings | None = None,
    task_spec: TaskSpec | None = None,
) -> pd.DataFrame:
    """Predictions for every patient of the fold the model has input for, with full bags (one row each)."""
    settings = settings or TrainSettings(tasks=data.tasks, device=str(device))
    spec = task_spec or _task_spec(data, settings)
    left_out = left_out_patients(model_name, data)
    indices = np.array([i for i in range(data.n_patients) if i not in left_out], dtype=np.int64)
    logits = infer(model, data, indices, device, settings)
    return prediction_table(logits, data, model_name=model_name, spec=spec, indices=indices)


def prediction_table(
    logits: dict[str, Tensor],
    data: FoldData,
    *,
    model_name: str,
    spec: TaskSpec,
    indices: npt.NDArray[np.int64] | None = None,
) -> pd.DataFrame:
    """The predictions table of the fold's patients ``indices`` (default: all) from their logits, in fold order."""
    rows = np.arange(data.n_patients, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    table = pd.DataFrame(
        {
            "patient_id": pd.Series(np.asarray(data.patient_ids, dtype=object)[rows], dtype=str),
            "fold": np.full(len(rows), data.fold, dtype=np.int64),
            "split": pd.Series(data.splits[rows], dtype=str),
            "model": pd.Series([model_name] * len(rows), dtype=str),
            "grade": pd.array(data.labels["grade"].to_numpy()[rows], dtype="Int64"),
        }
    )
    for task in CLASSIFICATION_TASKS:
        if task not in spec.tasks:
            continue
        if task != "grade":
            table[task] = pd.array(data.labels[task].to_numpy()[rows], dtype="Int64")
        probabilities = torch.softmax(logits[task], dim=1).numpy().astype(np.float64)
        table[f"{task}_pred"] = probabilities.argmax(axis=1).astype(np.int64)
        for k in range(probabilities.shape[1]):
            table[f"{task}_prob_{k}"] = probabilities[:, k]
    if "binary" in spec.tasks:
        table["binary"] = pd.array(data.labels["binary"].to_numpy()[rows], dtype="Int64")
        table["binary_prob"] = torch.sigmoid(logits["binary"].reshape(-1)).numpy().astype(np.float64)
    table["survival_time"] = data.survival_time[rows].astype(np.float64)
    table["event"] = pd.array(data.event.to_numpy()[rows], dtype="Int64")
    if "survival" in spec.tasks:
        table["risk"] = _risk(logits["survival"], spec).numpy().astype(np.float64)
    return table


def _log_left_out(description: str, data: FoldData, left_out: dict[int, str]) -> None:
    if left_out:
        logger.warning(
            "%s: %d patient(s) left out, neither trained on nor predicted: %s",
            description,
            len(left_out),
            "; ".join(f"{data.patient_ids[i]} ({data.splits[i]}): {reason}" for i, reason in sorted(left_out.items())),
        )


def left_out_table(data: FoldData, left_out: dict[int, str]) -> pd.DataFrame:
    """``patient_id, split, reason`` of the patients a model left out."""
    rows = sorted(left_out)
    return pd.DataFrame(
        {
            "patient_id": [data.patient_ids[i] for i in rows],
            "split": [str(data.splits[i]) for i in rows],
            "reason": [left_out[i] for i in rows],
        },
        dtype=str,
    )


def _checkpoint(
    *,
    model: nn.Module,
    model_name: str,
    data: FoldData,
    settings: TrainSettings,
    task_spec: TaskSpec,
    subspaces: dict[str, list[int]],
    options: dict[str, Any],
    best_epoch: int,
    best_val_loss: float | None,
    epochs_run: int,
) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "model_name": model_name,
        "fold": data.fold,
        "state_dict": {name: value.detach().cpu() for name, value in model.state_dict().items()},
        "settings": settings.to_dict(),
        "task_spec": task_spec.to_dict(),
        "model_options": options,
        "subspaces": subspaces,
        "n_tiles_dim": data.n_tiles_dim,
        "n_genomic": data.n_genomic,
        "n_clinical": data.n_clinical,
        "gene_groups": data.gene_groups,
        "grade_classes": list(data.grade_classes),
        "class_names": {task: list(names) for task, names in data.class_names.items()},
        "binary_label": data.binary_label,
        "genomics": data.preprocessing.genomics.to_dict(),
        "clinical": data.preprocessing.clinical.to_dict(),
        "bin_edges": None if data.bin_edges is None else [float(edge) for edge in data.bin_edges],
        "encoder": data.encoder,
        "best_epoch": best_epoch,
        "best_val_loss": best_val_loss,
        "epochs_run": epochs_run,
    }


def load_trained_model(
    checkpoint: Path, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved by :func:`train_fold` (eval mode) and return it with the checkpoint dict."""
    checkpoint = Path(checkpoint)
    try:
        content = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise WeightsError(f"cannot load the model checkpoint ({exc}).", path=checkpoint) from None
    if not isinstance(content, dict) or content.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(
            "not a histofuse model checkpoint.", path=checkpoint, fix="re-run training to recreate it."
        )
    settings = content["settings"]
    dims = InputDims(
        n_tiles_dim=int(content["n_tiles_dim"]),
        n_genomic=int(content["n_genomic"]),
        n_clinical=int(content.get("n_clinical", 0)),
        gene_groups=content.get("gene_groups") or (),
        subspaces=content.get("subspaces") or {},
    )
    model = build_model(
        content["model_name"],
        dims,
        task_spec=TaskSpec.from_dict(content["task_spec"]),
        hidden_dim=int(settings["hidden_dim"]),
        dropout=float(settings["dropout"]),
        **content.get("model_options", {}),
    )
    try:
        model.load_state_dict(content["state_dict"])
    except RuntimeError as exc:
        raise WeightsError(f"weights do not match the architecture ({exc}).", path=checkpoint) from None
    model.to(device).eval()
    return model, content


def build_fold_model(
    model_name: str, data: FoldData, settings: TrainSettings, task_spec: TaskSpec
) -> tuple[nn.Module, dict[str, list[int]], dict[str, Any]]:
    """The untrained model for ``data``, its genomic subspaces and its builder options."""
    options = settings.options_for(model_name)
    subspaces = data.subspaces(settings.subspaces) if data.n_genomic else {}
    check_min_batch(model_name, settings.batch_size)
    dims = InputDims(
        n_tiles_dim=data.n_tiles_dim,
        n_genomic=data.n_genomic,
        n_clinical=data.n_clinical,
        gene_groups=data.gene_groups or (),
        subspaces=subspaces,
    )
    model = build_model(
        model_name,
        dims,
        task_spec=task_spec,
        hidden_dim=settings.hidden_dim,
        dropout=settings.dropout,
        **options,
    )
    if getattr(model, "needs_coords", False) and not data.bags.has_coords:
        raise ConfigError(
            f"model '{model_name}' reads the slides on their tile grid, but some feature files have no "
            "'coords' dataset.",
            fix=f"extract or import features with their tile coordinates, or set training.model_options.{model_name}.grid: pseudo.",
        )
    return model, subspaces, options


def train_fold(
    *,
    model_name: str,
    fold: int,
    features_dir: Path,
    tables_dir: Path,
    folds_tsv: Path,
    settings: TrainSettings,
    out_checkpoint: Path,
    out_predictions: Path,
    out_history: Path | None = None,
    preprocessing: Path | None = None,
    use_wsi: bool = True,
    state: Path | None = None,
) -> None:
    """Train ``model_name`` on ``fold``, keep the best epoch, and predict all of the fold's patients.

    ``preprocessing``: the fold's fitted table preprocessing (JSON from ``histofuse preprocess``);
    fitted here on the fold's train split when None. ``use_wsi=False``: no slides in this cohort.
    ``state``: where the resumable last-epoch state is kept (None: no resuming).
    """
    device = settings.resolve_device()
    description = f"{model_name} fold {fold}"
    with _reproducible(settings.seed):
        data = load_fold_for(
            settings,
            fold=fold,
            features_dir=features_dir,
            tables_dir=tables_dir,
            folds_tsv=folds_tsv,
            preprocessing=preprocessing,
            use_wsi=use_wsi,
        )
        task_spec = _task_spec(data, settings)
        torch.manual_seed(settings.seed)
        model, subspaces, options = build_fold_model(model_name, data, settings, task_spec)
        model.to(device)
        optimizer = _optimizer(model, settings)
        run = _Run(
            model=model,
            optimizer=optimizer,
            data=data,
            objective=Objective.for_fold(data, settings, task_spec),
            settings=settings,
            device=device,
            left_out=frozenset(left_out_patients(model_name, data)),
        )
        _log_left_out(description, data, left_out_patients(model_name, data))
        logger.info("%s: training on %s (%s autocast)", description, device, settings.autocast_dtype(device) or "no")
        best_state, history, best_epoch, best_val_loss = _fit(
            run, description, None if state is None else Path(state), fingerprint(model_name, data, settings)
        )
        model.load_state_dict(best_state)
        predictions = predict_fold(
            model, data, model_name=model_name, device=device, settings=settings, task_spec=task_spec
        )

    logger.info("%s: best epoch %d of %d", description, best_epoch, len(history))
    checkpoint = _checkpoint(
        model=model,
        model_name=model_name,
        data=data,
        settings=settings,
        task_spec=task_spec,
        subspaces=subspaces,
        options=options,
        best_epoch=best_epoch,
        best_val_loss=best_val_loss,
        epochs_run=len(history),
    )
    with atomic_path(out_checkpoint) as tmp:
        torch.save(checkpoint, tmp)
    write_predictions(predictions, out_predictions, left_out=left_out_table(data, left_out_patients(model_name, data)))
    if out_history is not None:
        with atomic_path(out_history) as tmp:
            pd.DataFrame(history, columns=["epoch", "train_loss", "val_loss", "val_score"]).to_csv(
                tmp, sep="\t", index=False
            )

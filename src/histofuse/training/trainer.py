"""Train one registered model on one fold and predict every patient of the fold.

Training: AdamW; each forward pass sees one patient's bag (at most ``max_tiles`` random tiles) and
gradients are accumulated over ``grad_accum`` bags per optimiser step. Each step's loss is
``sum_task weight_task * mean_task``, where the mean runs over the step's bags labelled for that
task, so accumulation gives exactly the mini-batch mean.

Model selection: after each epoch the same loss is computed on the validation patients with full
bags (eval mode); the epoch with the lowest validation loss is kept, and training stops early after
``patience`` epochs without improvement. The loss is used (rather than c-index / AUC) because it
covers every task, reacts smoothly on small validation sets and is defined for any label mix. When
no validation patient has a label, all epochs run and the last one is kept.

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
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm import tqdm

from histofuse.errors import HistofuseError, WeightsError
from histofuse.io import atomic_path
from histofuse.losses import Reduction, masked_cross_entropy, risk_from_logits, survival_nll
from histofuse.models.registry import TaskSpec, build_model
from histofuse.preprocess import FoldPreprocessing
from histofuse.training.data import FoldData, load_fold_data
from histofuse.training.settings import TrainSettings

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FORMAT", "load_trained_model", "predict_fold", "train_fold"]

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


def _task_losses(
    outputs: dict[str, Any],
    data: FoldData,
    indices: Sequence[int] | npt.NDArray[np.int64],
    settings: TrainSettings,
    reduction: Reduction,
) -> dict[str, Tensor]:
    """Per-task losses of ``outputs`` (rows aligned with ``indices``) with the given reduction."""
    index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
    losses: dict[str, Tensor] = {}
    for task in settings.tasks:
        logits = outputs[task]
        if task == "grade":
            losses[task] = masked_cross_entropy(logits, data.grade[index], reduction=reduction)
        else:
            losses[task] = survival_nll(
                logits,
                data.survival_bin[index],
                data.censored[index],
                alpha=settings.alpha_surv,
                reduction=reduction,
            )
    return losses


def _subsample(bag: Tensor, max_tiles: int, rng: np.random.Generator) -> Tensor:
    if max_tiles <= 0 or bag.shape[0] <= max_tiles:
        return bag
    keep = np.sort(rng.choice(bag.shape[0], size=max_tiles, replace=False))
    return bag[torch.from_numpy(keep)]


def _forward(
    model: nn.Module, data: FoldData, index: int, bag: Tensor, device: torch.device
) -> dict[str, Any]:
    genomics = data.genomics[index : index + 1].to(device)
    clinical = data.clinical[index : index + 1].to(device)
    return model([bag.to(device=device, dtype=torch.float32)], genomics, clinical)


@torch.no_grad()
def _infer(
    model: nn.Module, data: FoldData, indices: Sequence[int] | npt.NDArray[np.int64], device: torch.device
) -> dict[str, Tensor]:
    """Logits per task for ``indices`` with full bags, on the CPU."""
    model.eval()
    collected: dict[str, list[Tensor]] = {task: [] for task in data.tasks}
    for index in indices:
        outputs = _forward(model, data, int(index), data.bags[int(index)], device)
        for task in data.tasks:
            collected[task].append(outputs[task].float().cpu())
    return {task: torch.cat(parts) if parts else torch.empty(0) for task, parts in collected.items()}


def _validation_loss(
    model: nn.Module,
    data: FoldData,
    indices: npt.NDArray[np.int64],
    settings: TrainSettings,
    device: torch.device,
) -> float:
    outputs = _infer(model, data, indices, device)
    index = torch.as_tensor(indices)
    total = 0.0
    for task, loss in _task_losses(outputs, data, indices, settings, "mean").items():
        if bool(data.mask(task)[index].any()):
            total += settings.task_weight(task) * float(loss)
    return total


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: FoldData,
    train_indices: npt.NDArray[np.int64],
    settings: TrainSettings,
    rng: np.random.Generator,
    device: torch.device,
) -> float:
    """One pass over the labelled training patients; returns the mean step loss."""
    model.train()
    order = rng.permutation(train_indices)
    step_losses: list[float] = []
    for start in range(0, len(order), settings.grad_accum):
        chunk = order[start : start + settings.grad_accum]
        chunk_index = torch.as_tensor(chunk)
        counts = {task: int(data.mask(task)[chunk_index].sum()) for task in settings.tasks}
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for index in chunk:
            bag = _subsample(data.bags[int(index)], settings.max_tiles, rng)
            outputs = _forward(model, data, int(index), bag, device)
            losses = _task_losses(outputs, data, [int(index)], settings, "sum")
            loss = sum(
                (
                    settings.task_weight(task) * losses[task] / counts[task]
                    for task in settings.tasks
                    if counts[task]
                ),
                start=torch.zeros((), device=device),
            )
            loss.backward()
            step_loss += float(loss.detach())
        optimizer.step()
        step_losses.append(step_loss)
    return float(np.mean(step_losses)) if step_losses else math.nan


def _fit(
    model: nn.Module, data: FoldData, settings: TrainSettings, device: torch.device, description: str
) -> tuple[dict[str, Tensor], list[dict[str, float]], int, float | None]:
    """Train with early stopping; returns the best state, the history, best epoch and its val loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    rng = np.random.default_rng(settings.seed)
    train_indices = np.array([i for i in data.indices("train") if data.has_label(int(i))], dtype=np.int64)
    if train_indices.size == 0:
        raise HistofuseError(
            f"no training patient of fold {data.fold} has a label for tasks {list(settings.tasks)}."
        )
    val_indices = np.array([i for i in data.indices("val") if data.has_label(int(i))], dtype=np.int64)
    if val_indices.size == 0:
        logger.warning("fold %d: no labelled validation patient; keeping the last epoch", data.fold)

    history: list[dict[str, float]] = []
    best_state: dict[str, Tensor] | None = None
    best_epoch, best_loss, stale = 0, math.inf, 0
    progress = tqdm(range(1, settings.epochs + 1), desc=description, unit="epoch", disable=None, leave=False)
    for epoch in progress:
        train_loss = _train_epoch(model, optimizer, data, train_indices, settings, rng, device)
        val_loss = (
            _validation_loss(model, data, val_indices, settings, device) if val_indices.size else math.nan
        )
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        progress.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        logger.debug("%s epoch %d: train %.4f, val %.4f", description, epoch, train_loss, val_loss)
        improved = val_indices.size == 0 or val_loss < best_loss
        if improved:
            best_state = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
            best_epoch, stale = epoch, 0
            if val_indices.size:
                best_loss = val_loss
        else:
            stale += 1
            if settings.patience and stale >= settings.patience:
                logger.info("%s: early stop at epoch %d (best epoch %d)", description, epoch, best_epoch)
                break
    if best_state is None:  # every validation loss was NaN: the model diverged
        raise HistofuseError(
            f"{description}: the validation loss was never finite; training diverged.",
            fix="lower training.lr or check the inputs for extreme values.",
        )
    return best_state, history, best_epoch, (best_loss if val_indices.size else None)


def predict_fold(model: nn.Module, data: FoldData, *, model_name: str, device: torch.device) -> pd.DataFrame:
    """Predictions for every patient of the fold with full bags (one row per patient)."""
    indices = np.arange(data.n_patients, dtype=np.int64)
    logits = _infer(model, data, indices, device)
    table = pd.DataFrame(
        {
            "patient_id": pd.Series(data.patient_ids, dtype=str),
            "fold": np.full(data.n_patients, data.fold, dtype=np.int64),
            "split": pd.Series(data.splits, dtype=str),
            "model": pd.Series([model_name] * data.n_patients, dtype=str),
            "grade": pd.array(data.grade_true.to_numpy(), dtype="Int64"),
        }
    )
    if "grade" in data.tasks:
        probabilities = torch.softmax(logits["grade"], dim=1).numpy().astype(np.float64)
        table["grade_pred"] = probabilities.argmax(axis=1).astype(np.int64)
        for k in range(probabilities.shape[1]):
            table[f"grade_prob_{k}"] = probabilities[:, k]
    table["survival_time"] = data.survival_time.astype(np.float64)
    table["event"] = pd.array(data.event.to_numpy(), dtype="Int64")
    if "survival" in data.tasks:
        table["risk"] = risk_from_logits(logits["survival"]).numpy().astype(np.float64)
    return table


def _checkpoint(
    *,
    model: nn.Module,
    model_name: str,
    data: FoldData,
    settings: TrainSettings,
    task_spec: TaskSpec,
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
        "task_spec": {
            "tasks": list(task_spec.tasks),
            "n_classes": task_spec.n_classes,
            "n_bins": task_spec.n_bins,
        },
        "n_tiles_dim": data.n_tiles_dim,
        "n_genomic": data.n_genomic,
        "n_clinical": data.n_clinical,
        "gene_groups": data.gene_groups,
        "grade_classes": list(data.grade_classes),
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
    spec = content["task_spec"]
    settings = content["settings"]
    model = build_model(
        content["model_name"],
        n_tiles_dim=int(content["n_tiles_dim"]),
        n_genomic=int(content["n_genomic"]),
        n_clinical=int(content.get("n_clinical", 0)),
        gene_groups=content.get("gene_groups") or None,
        task_spec=TaskSpec(
            tasks=tuple(spec["tasks"]), n_classes=int(spec["n_classes"]), n_bins=int(spec["n_bins"])
        ),
        hidden_dim=int(settings["hidden_dim"]),
        dropout=float(settings["dropout"]),
    )
    try:
        model.load_state_dict(content["state_dict"])
    except RuntimeError as exc:
        raise WeightsError(f"weights do not match the architecture ({exc}).", path=checkpoint) from None
    model.to(device).eval()
    return model, content


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
) -> None:
    """Train ``model_name`` on ``fold``, keep the best epoch, and predict all of the fold's patients.

    ``preprocessing``: the fold's fitted table preprocessing (JSON from ``histofuse preprocess``);
    fitted here on the fold's train split when None. ``use_wsi=False``: no slides in this cohort.
    """
    device = settings.resolve_device()
    description = f"{model_name} fold {fold}"
    with _reproducible(settings.seed):
        data = load_fold_data(
            fold=fold,
            features_dir=Path(features_dir),
            tables_dir=Path(tables_dir),
            folds_tsv=Path(folds_tsv),
            tasks=settings.tasks,
            n_bins=settings.n_bins,
            preprocessing=None if preprocessing is None else FoldPreprocessing.read(preprocessing),
            use_wsi=use_wsi,
        )
        task_spec = TaskSpec(
            tasks=settings.tasks,
            n_classes=len(data.grade_classes) if "grade" in settings.tasks else 0,
            n_bins=settings.n_bins,
        )
        torch.manual_seed(settings.seed)
        model = build_model(
            model_name,
            n_tiles_dim=data.n_tiles_dim,
            n_genomic=data.n_genomic,
            n_clinical=data.n_clinical,
            gene_groups=data.gene_groups or None,
            task_spec=task_spec,
            hidden_dim=settings.hidden_dim,
            dropout=settings.dropout,
        ).to(device)
        logger.info("%s: training on %s", description, device)
        best_state, history, best_epoch, best_val_loss = _fit(model, data, settings, device, description)
        model.load_state_dict(best_state)
        predictions = predict_fold(model, data, model_name=model_name, device=device)

    logger.info("%s: best epoch %d of %d", description, best_epoch, len(history))
    checkpoint = _checkpoint(
        model=model,
        model_name=model_name,
        data=data,
        settings=settings,
        task_spec=task_spec,
        best_epoch=best_epoch,
        best_val_loss=best_val_loss,
        epochs_run=len(history),
    )
    with atomic_path(out_checkpoint) as tmp:
        torch.save(checkpoint, tmp)
    with atomic_path(out_predictions) as tmp:
        predictions.to_parquet(tmp, index=False)
    if out_history is not None:
        with atomic_path(out_history) as tmp:
            pd.DataFrame(history, columns=["epoch", "train_loss", "val_loss"]).to_csv(
                tmp, sep="\t", index=False
            )

"""The resumable last-epoch state of a training run.

After every epoch the trainer writes (atomically) everything needed to continue exactly where it
stopped: model and optimiser state, the best epoch so far and its weights, the early-stopping
counter, the history, and the states of the random generators (Python, NumPy, torch CPU). A run
killed mid-way and started again resumes after the last finished epoch; a finished run started
again with more ``epochs`` continues from its last epoch.

A state is only reused when its *fingerprint* matches: the model, fold, every training setting
except ``epochs`` and ``patience``, and a digest of the fold's inputs (training patients, labels,
clinical presence, preprocessing and feature files). Otherwise training starts afresh, and says
why in the log.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from histofuse.io import atomic_path
from histofuse.training.data import FoldData
from histofuse.training.settings import TrainSettings

logger = logging.getLogger(__name__)

__all__ = ["RunState", "fingerprint", "load_state", "save_state"]

STATE_FORMAT = "histofuse-train-state/1"
_NOT_FINGERPRINTED = ("epochs", "patience", "resume", "device")


def fingerprint(model_name: str, data: FoldData, settings: TrainSettings) -> str:
    """Digest of what a resumed run must share with the run that wrote the state."""
    digest = hashlib.sha256()
    plain = {k: v for k, v in settings.to_dict().items() if k not in _NOT_FINGERPRINTED}
    digest.update(json.dumps({"model": model_name, "fold": data.fold, "settings": plain}, sort_keys=True).encode())
    digest.update(json.dumps([data.patient_ids, data.splits.tolist()]).encode())
    digest.update(data.preprocessing.to_json().encode())
    for task, target in sorted(data.targets.items()):
        digest.update(task.encode() + target.numpy().tobytes())
    digest.update(data.survival_bin.numpy().tobytes() + data.censored.numpy().tobytes())
    digest.update(data.clinical_present.numpy().tobytes())
    digest.update(json.dumps([data.n_tiles_dim, data.n_genomic, data.n_clinical]).encode())
    for files, sizes in zip(data.bags.files, data.bags.sizes, strict=True):
        # a file rewritten since (e.g. features of another encoder, same names and tile counts)
        # has another size or modification time
        stats = [(path.name, *_size_and_mtime(path)) for path in files]
        digest.update(json.dumps([stats, list(sizes)]).encode())
    return digest.hexdigest()


def _size_and_mtime(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@dataclass(kw_only=True)
class RunState:
    """Progress of one run after ``epoch`` finished epochs."""

    fingerprint: str
    epoch: int = 0
    model: dict[str, Tensor] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    best_model: dict[str, Tensor] | None = None
    best_epoch: int = 0
    best_score: float = float("-inf")
    stale: int = 0
    stopped: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    rng: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per task, for models with one copy per task (:mod:`histofuse.training.selection`)."""


def capture_rng(generator: np.random.Generator) -> dict[str, Any]:
    """States of the training generator and of NumPy's and torch's global generators."""
    return {
        "generator": json.dumps(generator.bit_generator.state),
        "numpy": json.dumps(_numpy_global_state()),
        "torch": torch.get_rng_state(),
    }


def _numpy_global_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {"kind": kind, "keys": np.asarray(keys).tolist(), "pos": pos, "has_gauss": has_gauss, "cached": cached}


def restore_rng(saved: dict[str, Any], generator: np.random.Generator) -> None:
    """Put the generators back where :func:`capture_rng` found them."""
    generator.bit_generator.state = json.loads(saved["generator"])
    state = json.loads(saved["numpy"])
    np.random.set_state(
        (state["kind"], np.asarray(state["keys"], dtype=np.uint32), state["pos"], state["has_gauss"], state["cached"])
    )
    torch.set_rng_state(saved["torch"])


def save_state(path: Path, state: RunState) -> None:
    """Write ``state`` atomically (loadable with ``weights_only=True``)."""
    content = {"format": STATE_FORMAT, **vars(state)}
    with atomic_path(path) as tmp:
        torch.save(content, tmp)


def load_state(path: Path, expected_fingerprint: str) -> RunState | None:
    """The state at ``path`` when it exists, is readable and matches the fingerprint; else None."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        logger.warning("%s: unreadable training state (%s); starting afresh", path, exc)
        return None
    if not isinstance(content, dict) or content.get("format") != STATE_FORMAT:
        logger.warning("%s: not a training state; starting afresh", path)
        return None
    if content.get("fingerprint") != expected_fingerprint:
        logger.info("%s: the state belongs to other settings or inputs; starting afresh", path)
        return None
    content.pop("format")
    return RunState(**content)

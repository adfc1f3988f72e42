"""Training settings: the ``training:`` section of the pipeline configuration."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from histofuse.errors import ConfigError
from histofuse.models.registry import KNOWN_TASKS

__all__ = ["TrainSettings"]

_SECTION = "training"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """How one model is trained on one fold.

    Attributes:
        tasks: prediction tasks, a subset of ``("grade", "survival")``.
        epochs: maximum number of passes over the training patients.
        lr, weight_decay: AdamW parameters.
        patience: early stopping: stop after this many epochs without a lower validation loss
            (0 = never stop early; the best epoch is kept either way).
        hidden_dim, dropout: model width and dropout rate.
        n_bins: discrete-time survival bins (quantiles of uncensored training times).
        alpha_surv: weight of the uncensored-only term of the survival loss (see ``losses``).
        max_tiles: tiles randomly kept per bag during training (0 = all); inference uses full bags.
        grad_accum: bags per optimiser step (each forward pass sees one bag).
        seed: seed of every random generator used in training.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        task_weights: ``(task, weight)`` pairs multiplying each task's loss; a task not listed has
            weight 1. A mapping is accepted and stored as sorted pairs.
    """

    tasks: tuple[str, ...] = ("grade", "survival")
    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-5
    patience: int = 5
    hidden_dim: int = 128
    dropout: float = 0.25
    n_bins: int = 4
    alpha_surv: float = 0.4
    max_tiles: int = 512
    grad_accum: int = 8
    seed: int = 0
    device: str = "auto"
    task_weights: tuple[tuple[str, float], ...] = field(default=())

    def __post_init__(self) -> None:
        tasks = self.tasks
        if isinstance(tasks, str):
            tasks = (tasks,)
        if not isinstance(tasks, (tuple, list)) or not all(isinstance(task, str) for task in tasks):
            raise self._error("tasks", f"must be a list of task names, got {tasks!r}")
        tasks = tuple(tasks)
        object.__setattr__(self, "tasks", tasks)
        if not tasks:
            raise self._error("tasks", f"is empty; use some of {list(KNOWN_TASKS)}")
        unknown = [task for task in tasks if task not in KNOWN_TASKS]
        if unknown:
            raise self._error("tasks", f"names unknown task(s) {unknown}; known: {list(KNOWN_TASKS)}")
        if len(set(tasks)) != len(tasks):
            raise self._error("tasks", f"lists a task twice: {list(tasks)}")

        for name, minimum in (
            ("epochs", 1),
            ("patience", 0),
            ("hidden_dim", 1),
            ("n_bins", 1),
            ("max_tiles", 0),
            ("grad_accum", 1),
            ("seed", 0),
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                raise self._error(name, f"must be an integer >= {minimum}, got {value!r}")
        for name, valid, wanted in (
            ("lr", lambda v: v > 0, "> 0"),
            ("weight_decay", lambda v: v >= 0, ">= 0"),
            ("dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
            ("alpha_surv", lambda v: 0 <= v <= 1, "in [0, 1]"),
        ):
            value = getattr(self, name)
            if not _is_number(value) or not valid(value):
                raise self._error(name, f"must be a number {wanted}, got {value!r}")
            object.__setattr__(self, name, float(value))

        if not isinstance(self.device, str):
            raise self._error("device", f"must be a string, got {self.device!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError) as exc:
                raise self._error("device", f"is not a valid torch device ({exc})") from None

        object.__setattr__(self, "task_weights", self._normalise_weights(self.task_weights, tasks))

    @staticmethod
    def _error(key: str, problem: str) -> ConfigError:
        return ConfigError(
            f"setting '{_SECTION}.{key}' {problem}.",
            fix=f"correct '{key}' in the '{_SECTION}:' section of the configuration.",
        )

    @classmethod
    def _normalise_weights(cls, weights: object, tasks: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
        if isinstance(weights, Mapping):
            pairs = list(weights.items())
        elif isinstance(weights, (tuple, list)):
            pairs = []
            for item in weights:
                if not isinstance(item, (tuple, list)) or len(item) != 2:
                    raise cls._error("task_weights", f"must map task names to weights, got {weights!r}")
                pairs.append((item[0], item[1]))
        else:
            raise cls._error("task_weights", f"must map task names to weights, got {weights!r}")
        normalised: dict[str, float] = {}
        for task, weight in pairs:
            if task not in tasks:
                raise cls._error("task_weights", f"names task {task!r}, which is not in tasks {list(tasks)}")
            if not _is_number(weight) or weight < 0:
                raise cls._error("task_weights", f"weight of {task!r} must be a number >= 0, got {weight!r}")
            if task in normalised:
                raise cls._error("task_weights", f"gives task {task!r} twice")
            normalised[task] = float(weight)
        if all(normalised.get(task, 1.0) == 0.0 for task in tasks):
            raise cls._error("task_weights", "gives every task weight 0")
        return tuple(sorted(normalised.items()))

    def task_weight(self, task: str) -> float:
        """Loss weight of ``task`` (1 unless set in ``task_weights``)."""
        return dict(self.task_weights).get(task, 1.0)

    def resolve_device(self) -> torch.device:
        """The torch device to train on: CUDA when present for ``"auto"``, else CPU."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def to_dict(self) -> dict[str, Any]:
        """Plain-type view (lists and dicts) for checkpoints and logs."""
        data = dataclasses.asdict(self)
        data["tasks"] = list(self.tasks)
        data["task_weights"] = dict(self.task_weights)
        return data

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> TrainSettings:
        """Settings from the configuration's ``training:`` section; an unknown key is a ConfigError."""
        if mapping is None:
            return cls()
        if not isinstance(mapping, Mapping):
            raise ConfigError(
                f"the '{_SECTION}:' section must be a mapping of settings, got {type(mapping).__name__}.",
            )
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(str(key) for key in mapping if key not in known)
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {', '.join(f'{_SECTION}.{key}' for key in unknown)}.",
                fix=f"remove them; known settings: {', '.join(sorted(known))}.",
            )
        values = dict(mapping)
        if isinstance(values.get("tasks"), list):
            values["tasks"] = tuple(values["tasks"])
        return cls(**values)

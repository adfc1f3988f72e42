"""Model registry: one name per architecture, built from the data's dimensions and the task list.

A model module registers its builder with ``@register_model("name")``; the builder is called with
the keyword arguments ``n_tiles_dim``, ``n_genomic``, ``task_spec``, ``hidden_dim``, ``dropout``
and any extra options given to :func:`build_model`. Every registered model follows one contract:

* ``forward(bags, genomics=None)`` where ``bags`` is one ``(N, D)`` tile-feature tensor or a
  sequence of them (``N`` may be 0) and ``genomics`` the matching ``(G,)`` / ``(B, G)`` tensor;
* it returns a dict with one ``(B, task_spec.n_outputs(task))`` logit tensor per task in
  ``task_spec.tasks`` and ``"attention"``: a list of ``(N_i,)`` tile weights (empty where the model
  has no attention).

To add a model, write its module in this package, decorate its builder with
:func:`register_model` and import the module in ``histofuse/models/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from histofuse.errors import ConfigError

__all__ = [
    "KNOWN_TASKS",
    "MODELS",
    "PLANNED_MODELS",
    "ModelBuilder",
    "TaskSpec",
    "build_model",
    "register_model",
]

KNOWN_TASKS: tuple[str, ...] = ("grade", "survival")

# Architectures the pipeline is meant to offer next; named here so the error for a not-yet-written
# model says so instead of calling the name unknown.
PLANNED_MODELS: tuple[str, ...] = (
    "abmil",
    "snn",
    "clinical",
    "concat",
    "kronecker",
    "m2f",
    "ksf",
    "bidistill",
)

ModelBuilder = Callable[..., nn.Module]
MODELS: dict[str, ModelBuilder] = {}

_Builder = TypeVar("_Builder", bound=ModelBuilder)


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """The prediction tasks and their output sizes.

    ``grade``: ``n_classes`` logits (cross-entropy); ``survival``: ``n_bins`` discrete-time hazard
    logits.
    """

    tasks: tuple[str, ...]
    n_classes: int = 0
    n_bins: int = 4

    def __post_init__(self) -> None:
        tasks = tuple(self.tasks)
        object.__setattr__(self, "tasks", tasks)
        if not tasks:
            raise ConfigError("at least one task is needed.", fix=f"use some of {list(KNOWN_TASKS)}.")
        unknown = [task for task in tasks if task not in KNOWN_TASKS]
        if unknown:
            raise ConfigError(f"unknown task(s) {unknown}.", fix=f"use some of {list(KNOWN_TASKS)}.")
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"task listed twice in {list(tasks)}.")
        if "grade" in tasks and self.n_classes < 2:
            raise ConfigError(f"the grade task needs at least 2 classes, got {self.n_classes}.")
        if "survival" in tasks and self.n_bins < 1:
            raise ConfigError(f"the survival task needs at least 1 time bin, got {self.n_bins}.")

    def n_outputs(self, task: str) -> int:
        """Number of logits the head of ``task`` produces."""
        if task == "grade":
            return self.n_classes
        if task == "survival":
            return self.n_bins
        raise KeyError(task)


def register_model(name: str) -> Callable[[_Builder], _Builder]:
    """Decorator that records a model builder under ``name`` (lower case, unique)."""
    key = name.lower()

    def decorate(builder: _Builder) -> _Builder:
        if key in MODELS:
            raise ValueError(f"model {key!r} is already registered")
        MODELS[key] = builder
        return builder

    return decorate


def build_model(
    name: str,
    *,
    n_tiles_dim: int,
    n_genomic: int,
    task_spec: TaskSpec,
    hidden_dim: int = 128,
    dropout: float = 0.25,
    **options: Any,
) -> nn.Module:
    """Build the registered model ``name``; an unknown name raises :class:`ConfigError`."""
    key = name.lower()
    builder = MODELS.get(key)
    if builder is None:
        known = ", ".join(sorted(MODELS)) or "none"
        if key in PLANNED_MODELS:
            problem = f"model '{name}' is planned but not implemented yet."
        else:
            problem = f"unknown model '{name}'."
        raise ConfigError(problem, fix=f"use one of the known models: {known}.")
    if n_tiles_dim < 1:
        raise ConfigError(f"tile feature dimension must be >= 1, got {n_tiles_dim}.")
    if n_genomic < 0:
        raise ConfigError(f"number of genomic features must be >= 0, got {n_genomic}.")
    return builder(
        n_tiles_dim=n_tiles_dim,
        n_genomic=n_genomic,
        task_spec=task_spec,
        hidden_dim=hidden_dim,
        dropout=dropout,
        **options,
    )

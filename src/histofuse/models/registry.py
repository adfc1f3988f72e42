"""Model registry: one name per architecture, built from the data's dimensions and the task list.

A model module registers its builder with ``@register_model("name")``; the builder is called with
the keyword arguments ``dims`` (an :class:`InputDims`: tile feature, genomic and clinical sizes,
gene groups, genomic subspaces), ``task_spec``, ``hidden_dim``, ``dropout`` and any extra options
given to :func:`build_model` (an option the builder does not take is a :class:`ConfigError`).

* ``dims.gene_groups``: one tuple of genomic column indices per gene group (never empty when
  ``n_genomic > 0``: no groups given means one group of all columns);
* ``dims.subspaces``: genomic subspace name → column indices (e.g. ``"tumour"``,
  ``"microenvironment"``), possibly empty.

Every registered model follows one contract (most derive from
:class:`histofuse.models.base.MultimodalModel`, which normalises these inputs):

* ``forward(bags, genomics=None, clinical=None, coords=None, *, clinical_present=None)`` where
  ``bags`` is one ``(N, D)`` tile-feature tensor or a sequence of them (``N`` may be 0; models
  that do not read slides also take ``None``), ``genomics`` the matching ``(G,)`` / ``(B, G)``
  tensor, ``clinical`` a ``(B, C)`` float tensor (already imputed and scaled), ``coords`` one
  ``(N_i, 2)`` integer tensor of level-0 ``(x, y)`` tile positions per bag, and
  ``clinical_present`` a ``(B,)`` bool tensor for models that handle a missing clinical modality;
* it returns a dict with one ``(B, task_spec.n_outputs(task))`` logit tensor per task in
  ``task_spec.tasks``, ``"attention"`` (a list of ``(N_i,)`` tile weights, empty where the model
  has no attention), ``"embedding"`` (``(B, E)`` features) and optionally ``"aux_losses"``
  (name → scalar tensor, added to the training loss with configured weights), ``"branches"``
  (branch name → ``(B, E)`` embedding), ``"branch_logits"`` (branch name → task → logits) and
  ``"half_logits"`` (task → the fused head on each of two branches alone, for gradient
  coordination; the model then also has ``coordination_heads()`` and ``hidden_dim``).

To add a model, write its module in this package, decorate its builder with
:func:`register_model` and import the module in ``histofuse/models/__init__.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from torch import nn

from histofuse.errors import ConfigError

__all__ = [
    "CLASSIFICATION_TASKS",
    "KNOWN_TASKS",
    "InputDims",
    "MODELS",
    "PLANNED_MODELS",
    "SLIDES_ONLY_MODELS",
    "SURVIVAL_LOSSES",
    "LossKind",
    "ModelBuilder",
    "TaskSpec",
    "build_model",
    "register_model",
    "resolve_gene_groups",
    "resolve_subspaces",
]

KNOWN_TASKS: tuple[str, ...] = ("grade", "diagnosis", "survival", "binary")
CLASSIFICATION_TASKS: tuple[str, ...] = ("grade", "diagnosis")
SURVIVAL_LOSSES: tuple[str, ...] = ("nll", "cox")

# Architectures the pipeline is meant to offer next; named here so the error for a not-yet-written
# model says so instead of calling the name unknown.
PLANNED_MODELS: tuple[str, ...] = ()

LossKind = Literal["cross_entropy", "survival_nll", "cox", "bce"]

SLIDES_ONLY_MODELS: frozenset[str] = frozenset({"abmil"})
"""Models whose only input is the slides: a patient without tile features has no input for them."""

ModelBuilder = Callable[..., nn.Module]
MODELS: dict[str, ModelBuilder] = {}

_Builder = TypeVar("_Builder", bound=ModelBuilder)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """The prediction tasks, their output sizes and losses.

    * ``grade`` / ``diagnosis``: multi-class, one logit per class (cross-entropy). ``n_classes`` is
      either one integer used by every classification task or a mapping task → number of classes.
    * ``survival``: ``n_bins`` discrete-time hazard logits (``survival_loss="nll"``) or one risk
      score (``survival_loss="cox"``, Cox partial likelihood).
    * ``binary``: one logit (binary cross-entropy).
    """

    tasks: tuple[str, ...]
    n_classes: int | Mapping[str, int] = 0
    n_bins: int = 4
    survival_loss: str = "nll"

    def __post_init__(self) -> None:
        tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)
        object.__setattr__(self, "tasks", tasks)
        if not tasks:
            raise ConfigError("at least one task is needed.", fix=f"use some of {list(KNOWN_TASKS)}.")
        unknown = [task for task in tasks if task not in KNOWN_TASKS]
        if unknown:
            raise ConfigError(f"unknown task(s) {unknown}.", fix=f"use some of {list(KNOWN_TASKS)}.")
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"task listed twice in {list(tasks)}.", fix="list each task once.")
        if isinstance(self.n_classes, Mapping):
            counts = dict(self.n_classes)
            stray = sorted(set(counts) - set(CLASSIFICATION_TASKS))
            if stray:
                raise ConfigError(
                    f"n_classes names task(s) {stray} that are not classification tasks.",
                    fix=f"give class counts only for {list(CLASSIFICATION_TASKS)}.",
                )
            object.__setattr__(self, "n_classes", counts)
        elif not _is_int(self.n_classes):
            raise ConfigError(
                f"n_classes must be an integer or a mapping task → integer, got {self.n_classes!r}."
            )
        for task in tasks:
            if task in CLASSIFICATION_TASKS:
                count = self.classes(task)
                if not _is_int(count) or count < 2:
                    raise ConfigError(
                        f"the {task} task needs at least 2 classes, got {count!r}.",
                        fix=f"give n_classes for '{task}' (the number of distinct labels).",
                    )
        if self.survival_loss not in SURVIVAL_LOSSES:
            raise ConfigError(
                f"unknown survival loss {self.survival_loss!r}.", fix=f"use one of {list(SURVIVAL_LOSSES)}."
            )
        if (
            "survival" in tasks
            and self.survival_loss == "nll"
            and (not _is_int(self.n_bins) or self.n_bins < 1)
        ):
            raise ConfigError(
                f"the survival task needs at least 1 time bin, got {self.n_bins!r}.", fix="set n_bins >= 1."
            )

    def classes(self, task: str) -> int:
        """Number of classes of the classification ``task`` (0 when not given)."""
        if isinstance(self.n_classes, Mapping):
            return int(self.n_classes.get(task, 0))
        return int(self.n_classes)

    def n_outputs(self, task: str) -> int:
        """Number of logits the head of ``task`` produces."""
        if task in CLASSIFICATION_TASKS:
            return self.classes(task)
        if task == "survival":
            return 1 if self.survival_loss == "cox" else self.n_bins
        if task == "binary":
            return 1
        raise KeyError(task)

    def loss_kind(self, task: str) -> LossKind:
        """Which loss of :mod:`histofuse.losses` trains ``task``."""
        if task in CLASSIFICATION_TASKS:
            return "cross_entropy"
        if task == "survival":
            return "cox" if self.survival_loss == "cox" else "survival_nll"
        if task == "binary":
            return "bce"
        raise KeyError(task)

    def only(self, task: str) -> TaskSpec:
        """The same specification restricted to the single task ``task``."""
        if task not in self.tasks:
            raise KeyError(task)
        n_classes: int | dict[str, int] = (
            dict(self.n_classes) if isinstance(self.n_classes, Mapping) else self.n_classes
        )
        return TaskSpec(
            tasks=(task,), n_classes=n_classes, n_bins=self.n_bins, survival_loss=self.survival_loss
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-type view for checkpoints; :meth:`from_dict` inverts it."""
        n_classes = dict(self.n_classes) if isinstance(self.n_classes, Mapping) else self.n_classes
        return {
            "tasks": list(self.tasks),
            "n_classes": n_classes,
            "n_bins": self.n_bins,
            "survival_loss": self.survival_loss,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskSpec:
        """Rebuild a specification written by :meth:`to_dict` (``survival_loss`` defaults to nll)."""
        n_classes = data.get("n_classes", 0)
        return cls(
            tasks=tuple(data["tasks"]),
            n_classes=dict(n_classes) if isinstance(n_classes, Mapping) else int(n_classes),
            n_bins=int(data.get("n_bins", 4)),
            survival_loss=str(data.get("survival_loss", "nll")),
        )


def _check_indices(indices: object, n_genomic: int, what: str) -> list[int]:
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
        raise ConfigError(f"{what} must be a list of genomic column indices, got {indices!r}.")
    values = list(indices)
    if not values:
        raise ConfigError(f"{what} is empty.", fix="give it at least one genomic column or remove it.")
    bad = [value for value in values if not _is_int(value) or not 0 <= value < n_genomic]
    if bad:
        raise ConfigError(
            f"{what} holds {bad[:5]}, which are not genomic column indices in [0, {n_genomic}).",
            fix="build the groups from the columns of the genomics table in use.",
        )
    if len(set(values)) != len(values):
        raise ConfigError(f"{what} lists a genomic column twice.", fix="list each column once.")
    return [int(value) for value in values]


def resolve_gene_groups(gene_groups: Sequence[Sequence[int]] | None, n_genomic: int) -> list[list[int]]:
    """Validated gene groups; none given (or an empty list) means one group of every column."""
    if not gene_groups:
        return [list(range(n_genomic))] if n_genomic > 0 else []
    return [
        _check_indices(group, n_genomic, f"gene group {number}") for number, group in enumerate(gene_groups)
    ]


def resolve_subspaces(subspaces: Mapping[str, Sequence[int]] | None, n_genomic: int) -> dict[str, list[int]]:
    """Validated genomic subspaces (name → column indices); ``None`` gives an empty mapping."""
    if subspaces is None:
        return {}
    if not isinstance(subspaces, Mapping):
        raise ConfigError(f"subspaces must map a name to genomic column indices, got {subspaces!r}.")
    return {
        str(name): _check_indices(columns, n_genomic, f"subspace '{name}'")
        for name, columns in subspaces.items()
    }


@dataclass(frozen=True, kw_only=True)
class InputDims:
    """What a model reads, as sizes: the data's dimensions, validated once.

    ``gene_groups`` and ``subspaces`` are resolved on construction (see :func:`resolve_gene_groups`
    and :func:`resolve_subspaces`): no groups means one group of every genomic column.
    """

    n_tiles_dim: int
    n_genomic: int = 0
    n_clinical: int = 0
    gene_groups: Sequence[Sequence[int]] = ()
    subspaces: Mapping[str, Sequence[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_tiles_dim < 1:
            raise ConfigError(f"tile feature dimension must be >= 1, got {self.n_tiles_dim}.")
        if self.n_genomic < 0:
            raise ConfigError(f"number of genomic features must be >= 0, got {self.n_genomic}.")
        if self.n_clinical < 0:
            raise ConfigError(f"number of clinical features must be >= 0, got {self.n_clinical}.")
        groups = resolve_gene_groups(self.gene_groups or None, self.n_genomic)
        subspaces = resolve_subspaces(self.subspaces, self.n_genomic)
        object.__setattr__(self, "gene_groups", tuple(tuple(group) for group in groups))
        object.__setattr__(self, "subspaces", {name: tuple(columns) for name, columns in subspaces.items()})


def register_model(name: str) -> Callable[[_Builder], _Builder]:
    """Decorator that records a model builder under ``name`` (lower case, unique)."""
    key = name.lower()

    def decorate(builder: _Builder) -> _Builder:
        if key in MODELS:
            raise ValueError(f"model {key!r} is already registered")
        MODELS[key] = builder
        return builder

    return decorate


def _check_options(name: str, builder: ModelBuilder, options: Mapping[str, Any]) -> None:
    parameters = inspect.signature(builder).parameters.values()
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
        return
    accepted = {parameter.name for parameter in parameters}
    unknown = sorted(set(options) - accepted)
    if unknown:
        standard = {"dims", "task_spec", "hidden_dim", "dropout"}
        own = sorted(accepted - standard)
        raise ConfigError(
            f"model '{name}' has no option(s) {unknown}.",
            fix=f"use only its options: {', '.join(own) or 'none'}.",
        )


def build_model(
    name: str,
    dims: InputDims,
    *,
    task_spec: TaskSpec,
    hidden_dim: int = 128,
    dropout: float = 0.25,
    **options: Any,
) -> nn.Module:
    """Build the registered model ``name``; an unknown name or option raises :class:`ConfigError`."""
    key = name.lower()
    builder = MODELS.get(key)
    if builder is None:
        known = ", ".join(sorted(MODELS)) or "none"
        if key in PLANNED_MODELS:
            problem = f"model '{name}' is planned but not implemented yet."
        else:
            problem = f"unknown model '{name}'."
        raise ConfigError(problem, fix=f"use one of the known models: {known}.")
    if not _is_int(hidden_dim) or hidden_dim < 1:
        raise ConfigError(f"hidden_dim must be an integer >= 1, got {hidden_dim!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must lie in [0, 1), got {dropout!r}.")
    _check_options(key, builder, options)
    return builder(dims=dims, task_spec=task_spec, hidden_dim=hidden_dim, dropout=dropout, **options)

"""Training settings: the ``training:`` section of the pipeline configuration.

Defaults, bounds and choices come from :class:`histofuse.configuration.TrainingRunConfig`; this
module adds the checks across keys and models (presets, overrides, minimum batch sizes).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from histofuse.configuration import TrainingRunConfig
from histofuse.errors import ConfigError
from histofuse.models.gradient_coordination import COORDINATION_MODES
from histofuse.models.registry import CLASSIFICATION_TASKS, KNOWN_TASKS, SURVIVAL_LOSSES

__all__ = [
    "LR_SCHEDULES",
    "MONITORS",
    "MODEL_PRESETS",
    "NOT_PER_MODEL",
    "OPTIMIZERS",
    "PRECISIONS",
    "SAME_MODEL",
    "TrainSettings",
    "check_min_batch",
    "check_model_list",
    "model_training_section",
]

logger = logging.getLogger(__name__)

_SECTION = "training"

_DEFAULTS = TrainingRunConfig()
"""Every training setting's default, type and bounds live in :class:`TrainingRunConfig`."""
_FIELDS = TrainingRunConfig.model_fields


def _choices(name: str) -> tuple[str, ...]:
    return tuple(typing.get_args(_FIELDS[name].annotation))


def _limits(name: str) -> dict[str, float]:
    """The bounds of a numeric setting (ge / gt / le / lt) from its field's metadata."""
    limits: dict[str, float] = {}
    for item in _FIELDS[name].metadata:
        for bound in ("ge", "gt", "le", "lt"):
            if getattr(item, bound, None) is not None:
                limits[bound] = getattr(item, bound)
    return limits


def _within(value: float, name: str) -> bool:
    checks = {"ge": value.__ge__, "gt": value.__gt__, "le": value.__le__, "lt": value.__lt__}
    return all(checks[bound](limit) for bound, limit in _limits(name).items())


def _wanted(name: str) -> str:
    """The bounds as a message says them: ``>= 1``, ``> 0``, ``in [0, 1)``."""
    limits = _limits(name)
    low = next(((bound, limits[bound]) for bound in ("ge", "gt") if bound in limits), None)
    high = next(((bound, limits[bound]) for bound in ("le", "lt") if bound in limits), None)
    if low and high:
        return f"in {'[' if low[0] == 'ge' else '('}{low[1]:g}, {high[1]:g}{']' if high[0] == 'le' else ')'}"
    symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    bound = low or high
    return f"{symbols[bound[0]]} {bound[1]:g}" if bound else ""


_INTEGERS = tuple(name for name, info in _FIELDS.items() if info.annotation is int)
_NUMBERS = tuple(name for name, info in _FIELDS.items() if info.annotation is float)

LR_SCHEDULES: tuple[str, ...] = _choices("lr_schedule")
MONITORS: tuple[str, ...] = _choices("monitor")
PRECISIONS: tuple[str, ...] = _choices("precision")
CLASS_WEIGHTS: tuple[str, ...] = _choices("class_weights")
OPTIMIZERS: tuple[str, ...] = _choices("optimizer")
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "ksf": {
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 0.1,
        "lr_schedule": "cosine",
        "batch_size": 8,
        "grad_accum": 8,
        "class_weights": "balanced",
        "alpha_surv": 0.0,
    },
}
"""Built-in training settings per model (the authors' training), applied on top of the
``training:`` section and beneath ``training.overrides.<model>``."""
MIN_BATCH: dict[str, tuple[int, str]] = {
    "ksf": (2, "its gene-guided consistency loss compares the patients of a forward batch"),
}
"""Smallest ``batch_size`` a model can be trained with, and why."""
SAME_MODEL: tuple[tuple[str, str], ...] = (("mm_baseline", "concat"),)
"""Registry names that build the same model (``concat`` only adds a check that genomics exist):
training both would show the same numbers twice."""
_NOT_SETTINGS: tuple[str, ...] = ("models", "cox", "cox_genomic", "overrides")
"""Keys of the ``training:`` section that are not a trained model's settings."""
NOT_PER_MODEL: tuple[str, ...] = (*_NOT_SETTINGS, "tasks")
"""Keys of the ``training:`` section that ``training.overrides`` cannot set for one model (the
models trained, the Cox model's own settings, overrides themselves and the tasks, which every model
of a run shares so that the report compares them)."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """How one model is trained on one fold.

    Attributes:
        tasks: prediction tasks, a subset of ``("grade", "diagnosis", "survival", "binary")``.
        epochs: maximum number of passes over the training patients.
        optimizer: ``"adamw"`` (decoupled weight decay) or ``"adam"`` (weight decay as an L2 term
            of the gradient, as in ``torch.optim.Adam``).
        lr, weight_decay: optimiser parameters.
        lr_schedule: ``"constant"`` or ``"cosine"`` (cosine decay to 0 over the epochs after the
            warm-up); the learning rate is set once per epoch.
        warmup_epochs: epochs of linear warm-up from ``lr / (warmup_epochs + 1)`` to ``lr``.
        patience: early stopping: stop after this many epochs without a better validation
            ``monitor`` value (0 = never stop early; the best epoch is kept either way).
        monitor: validation quantity that picks the best epoch: ``"loss"`` (lower is better),
            ``"auc"`` (of the first classification or binary task) or ``"cindex"`` (survival).
        hidden_dim, dropout: model width and dropout rate.
        n_bins: discrete-time survival bins (quantiles of uncensored training times).
        alpha_surv: weight of the uncensored-only term of the survival loss (see ``losses``).
        survival_loss: ``"nll"`` (discrete-time hazards over ``n_bins``) or ``"cox"`` (partial
            likelihood over each forward batch; needs ``batch_size >= 2``).
        class_weights: ``"none"`` or ``"balanced"`` (cross-entropy of grade / diagnosis weighted by
            the inverse class frequency of the fold's training part).
        binary_label: column of the patients table that the ``binary`` task predicts (0/1).
        max_tiles: tiles randomly kept per bag during training (0 = all); inference uses full bags.
        grad_accum: bags per optimiser step; the step's loss is the exact mean over its bags
            whatever ``batch_size`` is.
        batch_size: bags per forward pass (the batch that Cox, KSF's consistency loss and the
            distillation losses are computed on); at most ``grad_accum``.
        seed: seed of every random generator used in training.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"fp32"`` or ``"bf16"``.
        resume: continue from the fold's last-epoch state when one matches these settings.
        task_weights: ``(task, weight)`` pairs multiplying each task's loss; a task not listed has
            weight 1. A mapping is accepted and stored as sorted pairs.
        aux_weights: weights of the models' auxiliary losses by name (``consistency``,
            ``distill_single_from_multi``, ``distill_multi_from_single``); 1 when not listed.
        coordination: ``ksf`` only: gradient coordination on its fused classifier's weight,
            ``"project"``, ``"reflect"`` (the authors' code) or ``"none"``
            (:mod:`histofuse.models.gradient_coordination`).
        subspaces: genomic subspace → gene-group names (``ksf``); None uses groups named
            ``tumour`` and ``microenvironment``.
        model_options: model name → options of its builder (e.g. ``{"m2f": {"n_heads": 4}}``).
    """

    tasks: tuple[str, ...] = tuple(_DEFAULTS.tasks)
    epochs: int = _DEFAULTS.epochs
    optimizer: str = _DEFAULTS.optimizer
    lr: float = _DEFAULTS.lr
    weight_decay: float = _DEFAULTS.weight_decay
    patience: int = _DEFAULTS.patience
    hidden_dim: int = _DEFAULTS.hidden_dim
    dropout: float = _DEFAULTS.dropout
    n_bins: int = _DEFAULTS.n_bins
    alpha_surv: float = _DEFAULTS.alpha_surv
    survival_loss: str = _DEFAULTS.survival_loss
    class_weights: str = _DEFAULTS.class_weights
    binary_label: str = _DEFAULTS.binary_label
    max_tiles: int = _DEFAULTS.max_tiles
    grad_accum: int = _DEFAULTS.grad_accum
    batch_size: int = _DEFAULTS.batch_size
    lr_schedule: str = _DEFAULTS.lr_schedule
    warmup_epochs: int = _DEFAULTS.warmup_epochs
    monitor: str = _DEFAULTS.monitor
    seed: int = _DEFAULTS.seed
    device: str = _DEFAULTS.device
    precision: str = _DEFAULTS.precision
    resume: bool = _DEFAULTS.resume
    task_weights: tuple[tuple[str, float], ...] = field(default=())
    aux_weights: dict[str, float] = field(default_factory=dict)
    coordination: str = _DEFAULTS.coordination
    subspaces: dict[str, list[str]] | None = _DEFAULTS.subspaces
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)

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

        for name in _INTEGERS:
            value = getattr(self, name)
            if not _is_int(value) or not _within(value, name):
                raise self._error(name, f"must be an integer {_wanted(name)}, got {value!r}")
        for name in _NUMBERS:
            value = getattr(self, name)
            if not _is_number(value) or not _within(value, name):
                raise self._error(name, f"must be a number {_wanted(name)}, got {value!r}")
            object.__setattr__(self, name, float(value))

        if not isinstance(self.device, str):
            raise self._error("device", f"must be a string, got {self.device!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError) as exc:
                raise self._error("device", f"is not a valid torch device ({exc})") from None

        object.__setattr__(self, "task_weights", self._normalise_weights(self.task_weights, tasks))
        self._check_choices(tasks)
        self._check_mappings()

    def _check_choices(self, tasks: tuple[str, ...]) -> None:
        for name, choices in (
            ("survival_loss", SURVIVAL_LOSSES),
            ("optimizer", OPTIMIZERS),
            ("coordination", COORDINATION_MODES),
            ("class_weights", CLASS_WEIGHTS),
            ("lr_schedule", LR_SCHEDULES),
            ("monitor", MONITORS),
            ("precision", PRECISIONS),
        ):
            if getattr(self, name) not in choices:
                raise self._error(name, f"must be one of {list(choices)}, got {getattr(self, name)!r}")
        if not isinstance(self.resume, bool):
            raise self._error("resume", f"must be true or false, got {self.resume!r}")
        if not isinstance(self.binary_label, str) or not self.binary_label:
            raise self._error("binary_label", f"must name a column of the patients table, got {self.binary_label!r}")
        if self.batch_size > self.grad_accum:
            raise self._error("batch_size", f"({self.batch_size}) must not exceed grad_accum ({self.grad_accum})")
        if "survival" in tasks and self.survival_loss == "cox" and self.batch_size < 2:
            raise self._error("batch_size", "must be >= 2 with survival_loss cox (the partial likelihood compares patients)")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise self._error("warmup_epochs", f"({self.warmup_epochs}) must be below epochs ({self.epochs})")
        if self.monitor == "cindex" and "survival" not in tasks:
            raise self._error("monitor", "is cindex, but survival is not among the tasks")
        if self.monitor == "auc" and self.auc_task is None:
            raise self._error("monitor", f"is auc, but no classification or binary task is among {list(tasks)}")

    def _check_mappings(self) -> None:
        if not isinstance(self.aux_weights, Mapping):
            raise self._error("aux_weights", f"must map auxiliary-loss names to weights, got {self.aux_weights!r}")
        for name, weight in self.aux_weights.items():
            if not _is_number(weight) or weight < 0:
                raise self._error("aux_weights", f"weight of {name!r} must be a number >= 0, got {weight!r}")
        object.__setattr__(self, "aux_weights", {str(k): float(v) for k, v in sorted(self.aux_weights.items())})
        if self.subspaces is not None:
            if not isinstance(self.subspaces, Mapping) or not all(
                isinstance(groups, (list, tuple)) and groups and all(isinstance(g, str) for g in groups)
                for groups in self.subspaces.values()
            ):
                raise self._error("subspaces", f"must map a subspace name to a list of gene-group names, got {self.subspaces!r}")
            object.__setattr__(self, "subspaces", {str(k): list(v) for k, v in self.subspaces.items()})
        if not isinstance(self.model_options, Mapping) or not all(
            isinstance(options, Mapping) for options in self.model_options.values()
        ):
            raise self._error("model_options", f"must map a model name to its options, got {self.model_options!r}")
        object.__setattr__(
            self, "model_options", {str(k): dict(v) for k, v in sorted(self.model_options.items())}
        )

    @property
    def auc_task(self) -> str | None:
        """The task whose AUC is monitored and reported for missing rates: binary, else the first class task."""
        if "binary" in self.tasks:
            return "binary"
        return next((task for task in self.tasks if task in CLASSIFICATION_TASKS), None)

    def options_for(self, model_name: str) -> dict[str, Any]:
        """Builder options of ``model_name`` from ``model_options`` (empty when not given)."""
        return dict(self.model_options.get(model_name, {}))

    def aux_weight(self, name: str) -> float:
        """Weight of the auxiliary loss ``name`` (1 unless set in ``aux_weights``)."""
        return self.aux_weights.get(name, 1.0)

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """bf16 for autocast (``precision`` bf16, or auto on CUDA), None for plain fp32."""
        if self.precision == "bf16" or (self.precision == "auto" and device.type == "cuda"):
            return torch.bfloat16
        return None

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


def model_training_section(section: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The ``training:`` settings of ``model``: the section's, then the model's preset, then ``overrides[model]``.

    The section's keys that are not settings (models, cox, cox_genomic, overrides) are left out of the result.
    The preset (:data:`MODEL_PRESETS`) replaces the section's values for that model; every value
    it replaces is logged. An override naming a model that is not trained, an unknown key, a key
    of :data:`NOT_PER_MODEL`, an invalid value or a ``batch_size`` below the model's minimum
    (:data:`MIN_BATCH`) is a :class:`ConfigError` naming ``training.overrides.<model>``.
    """
    overrides = section.get("overrides") or {}
    if not isinstance(overrides, Mapping):
        raise TrainSettings._error("overrides", f"must map a model name to its settings, got {overrides!r}")
    models = list(section.get("models") or [])
    stray = sorted(str(name) for name in overrides if name not in models)
    if stray:
        raise ConfigError(
            f"setting '{_SECTION}.overrides' names {', '.join(stray)}, which {_SECTION}.models ({models}) does not train.",
            fix=f"add them to {_SECTION}.models or remove their overrides.",
        )
    override = overrides.get(model) or {}
    if not isinstance(override, Mapping):
        raise TrainSettings._error(f"overrides.{model}", f"must be a mapping of settings, got {override!r}")
    fixed = sorted(str(key) for key in override if key in NOT_PER_MODEL)
    if fixed:
        raise ConfigError(
            f"setting '{_SECTION}.overrides.{model}' sets {', '.join(fixed)}, which cannot differ between models.",
            fix=f"set {', '.join(fixed)} in the '{_SECTION}:' section itself.",
        )
    merged = {key: value for key, value in section.items() if key not in _NOT_SETTINGS}
    preset = {key: value for key, value in MODEL_PRESETS.get(model, {}).items() if key not in override}
    _log_preset(model, merged, preset)
    merged.update(preset)
    merged.update(override)
    try:
        settings = TrainSettings.from_mapping(merged)
    except ConfigError as err:
        raise ConfigError(
            f"setting '{_SECTION}.overrides.{model}': {err.problem}",
            fix=f"correct the settings under '{_SECTION}.overrides.{model}'.",
        ) from err
    check_min_batch(model, settings.batch_size)
    return merged


def _log_preset(model: str, section: Mapping[str, Any], preset: Mapping[str, Any]) -> None:
    """Log what ``model``'s preset replaces: a warning where it replaces a value the user chose."""
    defaults = {item.name: item.default for item in dataclasses.fields(TrainSettings)}
    replaced = {key: (section.get(key, defaults[key]), value) for key, value in preset.items()}
    replaced = {key: pair for key, pair in replaced.items() if pair[0] != pair[1]}
    chosen = sorted(key for key, (old, _) in replaced.items() if old != defaults[key])
    if not replaced:
        return
    message = "%s trains with its preset: %s (set %s.overrides.%s.<key> to change one)"
    listed = ", ".join(f"{key} {new!r} instead of {old!r}" for key, (old, new) in sorted(replaced.items()))
    (logger.warning if chosen else logger.info)(message, model, listed, _SECTION, model)


def check_min_batch(model: str, batch_size: int) -> None:
    """A :class:`ConfigError` when ``batch_size`` is below ``model``'s minimum (:data:`MIN_BATCH`)."""
    if model not in MIN_BATCH or batch_size >= MIN_BATCH[model][0]:
        return
    minimum, reason = MIN_BATCH[model]
    preset = MODEL_PRESETS.get(model, {}).get("batch_size")
    default = f" (its preset is {preset}; remove the override to use it)" if preset else ""
    raise ConfigError(
        f"setting '{_SECTION}.overrides.{model}': {model} needs batch_size >= {minimum}, got {batch_size}: {reason}.",
        fix=f"set '{_SECTION}.overrides.{model}.batch_size' to {minimum} or more{default}, with grad_accum at least as large.",
    )


def check_model_list(models: list[str] | tuple[str, ...]) -> None:
    """A :class:`ConfigError` when ``training.models`` lists a model twice, under one name or two."""
    repeated = sorted({name for name in models if list(models).count(name) > 1})
    if repeated:
        raise ConfigError(
            f"setting '{_SECTION}.models' lists {', '.join(repeated)} more than once.",
            fix=f"list each model once in '{_SECTION}.models'.",
        )
    for first, second in SAME_MODEL:
        if first in models and second in models:
            raise ConfigError(
                f"setting '{_SECTION}.models' lists both {first} and {second}, which are the same model "
                f"({second} only checks that genomic features exist).",
                fix=f"keep one of {first} and {second} in '{_SECTION}.models'.",
            )

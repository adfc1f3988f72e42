"""Model architectures and their registry.

Importing this package registers every built-in model; see :mod:`histofuse.models.registry`.
"""

from __future__ import annotations

from histofuse.models import fusion as _fusion  # noqa: F401  (registers "mm_baseline")
from histofuse.models.fusion import MultimodalBaseline
from histofuse.models.mil import GatedAttentionMIL
from histofuse.models.registry import (
    KNOWN_TASKS,
    MODELS,
    PLANNED_MODELS,
    TaskSpec,
    build_model,
    register_model,
)
from histofuse.models.snn import SelfNormalizingNetwork

__all__ = [
    "KNOWN_TASKS",
    "MODELS",
    "PLANNED_MODELS",
    "GatedAttentionMIL",
    "MultimodalBaseline",
    "SelfNormalizingNetwork",
    "TaskSpec",
    "build_model",
    "register_model",
]

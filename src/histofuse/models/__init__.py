"""Model architectures and their registry.

Importing this package registers every built-in model; see :mod:`histofuse.models.registry`.
``build_model(name, InputDims(...), task_spec=...)`` builds one; the models derive from
:class:`~histofuse.models.base.MultimodalModel`, which checks and batches their inputs.

* baselines: ``abmil`` (slides), ``snn`` (genomics), ``clinical`` (clinical table),
  ``concat`` and ``mm_baseline`` (ABMIL ⊕ SNN), ``kronecker`` (gated Kronecker fusion);
* ``m2f``: genomic-group co-attention, multi-task (``joint=False``: one copy per task);
* ``ksf``: one branch per genomic subspace, each reading the tiles with cross-modal deformable
  attention, with gradient coordination on the fused classifier
  (:mod:`histofuse.models.gradient_coordination`);
* ``bidistill``: bidirectional distillation between slides + clinical and slides only, and its
  comparator ``mm_impute``.
"""

from __future__ import annotations

from histofuse.models import baselines as _baselines  # noqa: F401  (registers "abmil", "snn", "clinical")
from histofuse.models import bidistill as _bidistill  # noqa: F401  (registers "bidistill", "mm_impute")
from histofuse.models import fusion as _fusion  # noqa: F401  (registers "mm_baseline", "concat")
from histofuse.models import kronecker as _kronecker  # noqa: F401  (registers "kronecker")
from histofuse.models import ksf as _ksf  # noqa: F401  (registers "ksf")
from histofuse.models import m2f as _m2f  # noqa: F401  (registers "m2f")
from histofuse.models.base import ModelInputs, MultimodalModel
from histofuse.models.baselines import ClinicalMLP, GenomicSNN, SlideABMIL
from histofuse.models.bidistill import BidirectionalDistillation, ImputedClinicalFusion
from histofuse.models.fusion import MultimodalBaseline
from histofuse.models.independent import IndependentTaskModels
from histofuse.models.kronecker import KroneckerFusion
from histofuse.models.ksf import KnowledgeSteeredFusion
from histofuse.models.m2f import MultimodalMultitaskFusion
from histofuse.models.mil import GatedAttentionMIL
from histofuse.models.registry import (
    KNOWN_TASKS,
    MODELS,
    PLANNED_MODELS,
    InputDims,
    TaskSpec,
    build_model,
    register_model,
)
from histofuse.models.snn import SelfNormalizingNetwork

__all__ = [
    "KNOWN_TASKS",
    "MODELS",
    "PLANNED_MODELS",
    "BidirectionalDistillation",
    "ClinicalMLP",
    "GatedAttentionMIL",
    "GenomicSNN",
    "ImputedClinicalFusion",
    "IndependentTaskModels",
    "InputDims",
    "KnowledgeSteeredFusion",
    "KroneckerFusion",
    "ModelInputs",
    "MultimodalBaseline",
    "MultimodalModel",
    "MultimodalMultitaskFusion",
    "SelfNormalizingNetwork",
    "SlideABMIL",
    "TaskSpec",
    "build_model",
    "register_model",
]

"""Confidence-guided gradient coordination on a fused classifier's weight (KSF).

The fused classifier of ``ksf`` reads ``[tumour, microenvironment]``; the gradient of each of its
weight rows (one per class or output) splits into a tumour half ``g_t`` and a microenvironment half
``g_m``. After the backward pass, for each row whose halves conflict (negative dot product), the
half of the **less confident** branch is changed against the other half ``h``
(:func:`resolve_conflict`):

* ``"project"`` (default): ``g - (g·h / ‖h‖²) h``, the component of ``g`` orthogonal to ``h``;
* ``"reflect"``: the authors' published code, which subtracts the projection twice:
  ``‖g - p‖ · (g - 2p) / ‖g - 2p‖`` with ``p = (g·h / ‖h‖²) h``, i.e. ``g`` reflected across the
  plane normal to ``h`` and rescaled to the norm of the projection. It points *against* ``h``
  wherever the projection would only have removed the conflict.

Equal confidences, agreeing halves or a zero half leave the row unchanged. A branch's confidence is
measured with the fused head applied to its half alone: the mean probability of the true class
(classification, :func:`classification_confidence`) or the concordance index of its risk scores
(survival, :func:`survival_confidence`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from histofuse.metrics import cindex

__all__ = [
    "COORDINATION_MODES",
    "classification_confidence",
    "coordinate",
    "coordinate_rows",
    "resolve_conflict",
    "survival_confidence",
]

COORDINATION_MODES: tuple[str, ...] = ("project", "reflect", "none")
"""Values of ``training.coordination``."""


def resolve_conflict(g: Tensor, h: Tensor, mode: str) -> Tensor:
    """``g`` changed against a conflicting ``h`` (both 1-D, ``h`` non-zero) by ``mode``."""
    projection = (torch.dot(g, h) / torch.dot(h, h)) * h
    if mode == "project":
        return g - projection
    if mode == "reflect":
        reflected = g - 2 * projection
        norm = torch.linalg.vector_norm(reflected)
        if float(norm) == 0.0:
            return reflected
        return reflected * (torch.linalg.vector_norm(g - projection) / norm)
    raise ValueError(f"mode must be 'project' or 'reflect', got {mode!r}")


def coordinate(g_a: Tensor, g_b: Tensor, conf_a: float, conf_b: float, mode: str = "project") -> tuple[Tensor, Tensor]:
    """Coordinated ``(g_a', g_b')`` of two halves (same shape): the less confident one gives way.

    Unchanged when ``mode`` is ``"none"``, the halves agree (``g_a·g_b >= 0``), either is zero, the
    confidences are equal or one of them is NaN (undefined on the batch).
    """
    if g_a.shape != g_b.shape:
        raise ValueError(f"the two gradients must have the same shape, got {tuple(g_a.shape)} and {tuple(g_b.shape)}")
    if mode not in COORDINATION_MODES:
        raise ValueError(f"mode must be one of {list(COORDINATION_MODES)}, got {mode!r}")
    flat_a, flat_b = g_a.reshape(-1), g_b.reshape(-1)
    if (
        mode == "none"
        or not (math.isfinite(conf_a) and math.isfinite(conf_b))
        or conf_a == conf_b
        or float(torch.dot(flat_a, flat_b)) >= 0.0
        or not bool(flat_a.any())
        or not bool(flat_b.any())
    ):
        return g_a, g_b
    if conf_a < conf_b:
        return resolve_conflict(flat_a, flat_b, mode).reshape(g_a.shape), g_b
    return g_a, resolve_conflict(flat_b, flat_a, mode).reshape(g_b.shape)


def coordinate_rows(gradient: Tensor, split: int, conf_a: float, conf_b: float, mode: str = "project") -> Tensor:
    """A weight gradient ``(K, D)`` with each row's halves ``[:split]`` / ``[split:]`` coordinated.

    Returns a new tensor; ``split`` must leave two halves of equal width (``D = 2 · split``).
    """
    if gradient.ndim != 2 or gradient.shape[1] != 2 * split:
        raise ValueError(f"gradient must be (K, {2 * split}) for split {split}, got {tuple(gradient.shape)}")
    rows = []
    for row in gradient:
        first, second = coordinate(row[:split], row[split:], conf_a, conf_b, mode)
        rows.append(torch.cat([first, second]))
    return torch.stack(rows)


def classification_confidence(logits: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    """Mean probability of the true class over the labelled samples (NaN when there are none).

    ``logits`` ``(B, K)`` with ``K >= 2`` uses the softmax; ``(B,)`` or ``(B, 1)`` is a binary
    logit (probability of the true 0 / 1 label from the sigmoid). ``mask`` defaults to the valid
    targets (class indices in range, or 0 / 1).
    """
    with torch.no_grad():
        target = target.reshape(-1).to(logits.device)
        if logits.ndim == 1 or logits.shape[1] == 1:
            probability_one = torch.sigmoid(logits.reshape(-1))
            valid = (target == 0) | (target == 1)
            keep = valid if mask is None else mask.reshape(-1).to(logits.device, torch.bool)
            if bool((keep & ~valid).any()):
                raise ValueError("a labelled binary target is not 0 or 1")
            true_probability = torch.where(target == 1, probability_one, 1 - probability_one)
        else:
            n_classes = logits.shape[1]
            target = target.long()
            valid = (target >= 0) & (target < n_classes)
            keep = valid if mask is None else mask.reshape(-1).to(logits.device, torch.bool)
            if bool((keep & ~valid).any()):
                raise ValueError(f"a labelled class index lies outside [0, {n_classes})")
            probabilities = torch.softmax(logits, dim=1)
            true_probability = probabilities.gather(1, target.clamp(0, n_classes - 1).unsqueeze(1)).squeeze(1)
        if not bool(keep.any()):
            return math.nan
        return float(true_probability[keep].mean())


def survival_confidence(risk: Tensor, time: Tensor, event: Tensor, mask: Tensor | None = None) -> float:
    """Harrell's concordance of ``risk`` (higher = worse) on the batch, via :func:`histofuse.metrics.cindex`.

    For discrete-time hazard logits pass :func:`histofuse.losses.risk_from_logits` of them; for a
    Cox head its single output. ``mask`` defaults to finite ``time`` and ``event``. NaN when the
    concordance is undefined (no event or no comparable pair).
    """
    risk_np = risk.detach().reshape(-1).double().cpu().numpy()
    time_np = time.detach().reshape(-1).double().cpu().numpy()
    event_np = event.detach().reshape(-1).double().cpu().numpy()
    keep = np.isfinite(time_np) & np.isfinite(event_np)
    if mask is not None:
        keep = mask.detach().reshape(-1).cpu().numpy().astype(bool)
    if not keep.any():
        return math.nan
    return cindex(time_np[keep], risk_np[keep], event_np[keep])

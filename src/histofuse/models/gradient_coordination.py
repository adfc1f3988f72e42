"""Confidence-guided gradient coordination between two branches that share parameters.

When the gradients of two branch losses on the shared parameters conflict (negative cosine), the
gradient of the **less confident** branch is projected onto the normal plane of the other's,
``g - (g·h / ‖h‖²) h``, and rescaled to its original norm, so the more confident branch's direction
is not undone while the other branch keeps its step size. With equal confidences both gradients
are projected, each against the other's original gradient. Without a conflict both are kept as
they are.

:func:`coordinated_backward` is the training-step entry point: it back-propagates two branch
losses, coordinated on the shared parameters and plainly summed everywhere else.

Confidence of a branch on a batch: the mean probability given to the true class (classification,
:func:`classification_confidence`) or the concordance index of its risk scores (survival,
:func:`survival_confidence`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from histofuse.metrics import cindex

__all__ = [
    "accumulate_gradients",
    "classification_confidence",
    "coordinate",
    "coordinated_backward",
    "coordinated_gradients",
    "survival_confidence",
]


def _project_keeping_norm(g: Tensor, h: Tensor) -> Tensor:
    """``g`` projected onto the plane normal to ``h``, rescaled to ``‖g‖`` (zero if ``g ∥ h``)."""
    projected = g - (torch.dot(g, h) / torch.dot(h, h)) * h
    projected_norm = torch.linalg.vector_norm(projected)
    if float(projected_norm) == 0.0:
        return projected
    return projected * (torch.linalg.vector_norm(g) / projected_norm)


def coordinate(g_a: Tensor, g_b: Tensor, conf_a: float, conf_b: float) -> tuple[Tensor, Tensor]:
    """Coordinated gradients ``(g_a', g_b')`` of two branches (same shape, any number of dims).

    * ``cos(g_a, g_b) >= 0`` or a zero gradient: both unchanged;
    * conflict and ``conf_a > conf_b``: ``g_b`` projected onto the normal plane of ``g_a``, norm kept;
    * conflict and ``conf_b > conf_a``: the same with the roles swapped;
    * conflict and equal confidences: both projected (each against the other's original).

    A gradient exactly opposite to the other one has no component left after projection and
    becomes zero. Confidences must be finite numbers.
    """
    if g_a.shape != g_b.shape:
        raise ValueError(
            f"the two gradients must have the same shape, got {tuple(g_a.shape)} and {tuple(g_b.shape)}"
        )
    for name, value in (("conf_a", conf_a), ("conf_b", conf_b)):
        if not math.isfinite(float(value)):
            raise ValueError(f"{name} must be a finite confidence, got {value}")
    flat_a, flat_b = g_a.reshape(-1), g_b.reshape(-1)
    if float(torch.dot(flat_a, flat_b)) >= 0.0 or not bool(flat_a.any()) or not bool(flat_b.any()):
        return g_a, g_b
    new_a, new_b = flat_a, flat_b
    if conf_a >= conf_b:
        new_b = _project_keeping_norm(flat_b, flat_a)
    if conf_b >= conf_a:
        new_a = _project_keeping_norm(flat_a, flat_b)
    return new_a.reshape(g_a.shape), new_b.reshape(g_b.shape)


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


def coordinated_gradients(
    loss_a: Tensor,
    loss_b: Tensor,
    parameters: Sequence[nn.Parameter],
    conf_a: float,
    conf_b: float,
) -> list[Tensor]:
    """Combined gradient ``g_a' + g_b'`` of two branch losses on the shared ``parameters``.

    Both gradients are taken with :func:`torch.autograd.grad` (the graph is retained, so the
    losses can still be back-propagated), flattened over all ``parameters`` into one vector each,
    coordinated with :func:`coordinate` and split back into one tensor per parameter. A parameter
    that a loss does not reach contributes zeros.
    """
    params = list(parameters)
    if not params:
        raise ValueError("coordinated_gradients needs at least one shared parameter")

    def flat_gradient(loss: Tensor) -> Tensor:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return torch.cat(
            [
                (torch.zeros_like(p) if g is None else g).reshape(-1)
                for p, g in zip(params, grads, strict=True)
            ]
        )

    g_a, g_b = coordinate(flat_gradient(loss_a), flat_gradient(loss_b), conf_a, conf_b)
    combined = g_a + g_b
    return [
        chunk.view_as(p) for chunk, p in zip(combined.split([p.numel() for p in params]), params, strict=True)
    ]


def accumulate_gradients(parameters: Sequence[nn.Parameter], gradients: Sequence[Tensor]) -> None:
    """Add ``gradients`` to the ``.grad`` of ``parameters`` (setting it where it is ``None``)."""
    params = list(parameters)
    grads = list(gradients)
    if len(params) != len(grads):
        raise ValueError(f"{len(params)} parameters but {len(grads)} gradients")
    for param, grad in zip(params, grads, strict=True):
        if param.grad is None:
            param.grad = grad.detach().clone()
        else:
            param.grad.add_(grad.detach())


def coordinated_backward(
    loss_a: Tensor,
    loss_b: Tensor,
    *,
    parameters: Sequence[nn.Parameter],
    shared: Sequence[nn.Parameter],
    conf_a: float,
    conf_b: float,
    retain_graph: bool = False,
) -> None:
    """Accumulate the gradients of two branch losses into ``.grad``, coordinated where shared.

    ``parameters`` are all trainable parameters of the model and ``shared`` the subset both
    branches use (e.g. :meth:`histofuse.models.ksf.KnowledgeSteeredFusion.shared_parameters`). On
    ``shared`` the added gradient is :func:`coordinated_gradients`; on the other parameters it is
    the plain gradient of ``loss_a + loss_b``. Call it after (or instead of) the backward pass of
    the main loss; gradients add up like ``Tensor.backward``.
    """
    shared_ids = {id(param) for param in shared}
    shared_params = [param for param in parameters if id(param) in shared_ids]
    if len(shared_params) != len(shared_ids):
        raise ValueError("every shared parameter must also be listed in parameters")
    others = [param for param in parameters if id(param) not in shared_ids and param.requires_grad]
    combined = coordinated_gradients(loss_a, loss_b, shared_params, conf_a, conf_b)
    if others:
        plain = torch.autograd.grad(loss_a + loss_b, others, retain_graph=retain_graph, allow_unused=True)
        reached = [(param, grad) for param, grad in zip(others, plain, strict=True) if grad is not None]
        accumulate_gradients([param for param, _ in reached], [grad for _, grad in reached])
    accumulate_gradients(shared_params, combined)

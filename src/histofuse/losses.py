"""Multi-task losses and the discrete-time survival helpers.

Survival is modelled in discrete time (Zadeh & Schmid, 2020): follow-up is cut into ``n_bins``
intervals and the survival head predicts one logit per interval, the hazard
``h_k = sigmoid(logit_k)`` = P(event in interval k | alive at the start of k). The survival
function at the end of interval k is ``S_k = prod_{j<=k} (1 - h_j)``, with ``S_{-1} = 1``.

For a patient whose time falls in bin ``y`` with censoring indicator ``c`` (1 = censored):

* uncensored term ``L_unc = -(1 - c) * (log S_{y-1} + log h_y)`` (alive through bin y-1, event in y);
* censored term   ``L_cen = -c * log S_y`` (still alive at the end of bin y);
* per-sample loss ``L = (1 - alpha) * (L_unc + L_cen) + alpha * L_unc = L_unc + (1 - alpha) * L_cen``.

``alpha`` therefore down-weights the censored patients' contribution: ``alpha = 0`` is the plain
likelihood, ``alpha = 1`` ignores censored patients. All logarithms are computed in log space
(``log h = logsigmoid(logit)``, ``log(1 - h) = logsigmoid(-logit)``, ``log S`` as a cumulative sum),
which stays finite for any finite logit, so no epsilon clamping of probabilities is needed.

Alternatively, survival can be trained with the Cox partial likelihood (:func:`cox_partial_nll`,
Breslow's handling of tied times), where the head predicts one risk score per patient. Binary tasks
use :func:`masked_bce`, and :func:`distillation_loss` compares a student's logits with a detached
teacher's, per kind of task.

Every loss takes a per-sample boolean ``mask`` (True = the label is known); masked samples
contribute nothing, and a batch without any labelled sample gives a zero loss that keeps the
autograd graph intact.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from histofuse.errors import HistofuseError

logger = logging.getLogger(__name__)

Reduction = Literal["mean", "sum", "none"]
DistillationKind = Literal["softmax", "sigmoid", "risk"]

__all__ = [
    "DistillationKind",
    "Reduction",
    "cox_partial_nll",
    "distillation_loss",
    "gene_guided_consistency",
    "masked_bce",
    "masked_cross_entropy",
    "risk_from_logits",
    "survival_bins",
    "survival_curve",
    "survival_nll",
    "to_bin",
]


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _masked_reduce(per_sample: Tensor, mask: Tensor, reduction: str) -> Tensor:
    """Zero the unlabelled samples, then keep them (none), sum, or average over the labelled ones."""
    per_sample = torch.where(mask, per_sample, torch.zeros_like(per_sample))
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    return total / mask.sum().clamp(min=1).to(total.dtype)


def _as_mask(mask: Tensor | None, default: Tensor) -> Tensor:
    if mask is None:
        return default
    return mask.to(device=default.device, dtype=torch.bool).reshape(default.shape)


def survival_nll(
    logits: Tensor,
    bins: Tensor,
    censored: Tensor,
    mask: Tensor | None = None,
    *,
    alpha: float = 0.4,
    reduction: Reduction = "mean",
) -> Tensor:
    """Discrete-time survival negative log-likelihood (see the module docstring).

    Args:
        logits: ``(B, n_bins)`` hazard logits.
        bins: ``(B,)`` integer time bin of each patient; entries outside ``[0, n_bins)`` are
            treated as missing when ``mask`` is not given.
        censored: ``(B,)`` 1 when the patient is censored, 0 when the event was observed.
        mask: ``(B,)`` True where the survival label is known; defaults to ``bins >= 0``.
        alpha: weight of the uncensored-only term, in ``[0, 1]``.
        reduction: ``"mean"`` over labelled samples, ``"sum"``, or ``"none"`` (per-sample, zeros
            at masked samples).
    """
    _check_reduction(reduction)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, n_bins), got shape {tuple(logits.shape)}")
    n_bins = logits.shape[1]
    bins = bins.reshape(-1).to(device=logits.device, dtype=torch.long)
    mask = _as_mask(mask, (bins >= 0) & (bins < n_bins))
    safe_bins = torch.where(mask, bins, torch.zeros_like(bins)).clamp(0, n_bins - 1).unsqueeze(1)
    cens = censored.reshape(-1).to(device=logits.device, dtype=logits.dtype)
    cens = torch.where(mask, cens, torch.zeros_like(cens))

    log_h = F.logsigmoid(logits)
    log_one_minus_h = F.logsigmoid(-logits)
    log_s = torch.cumsum(log_one_minus_h, dim=1)
    log_s_prev = torch.cat([torch.zeros_like(log_s[:, :1]), log_s[:, :-1]], dim=1)

    log_h_y = log_h.gather(1, safe_bins).squeeze(1)
    log_s_prev_y = log_s_prev.gather(1, safe_bins).squeeze(1)
    log_s_y = log_s.gather(1, safe_bins).squeeze(1)

    uncensored = -(1.0 - cens) * (log_s_prev_y + log_h_y)
    censored_term = -cens * log_s_y
    per_sample = (1.0 - alpha) * (uncensored + censored_term) + alpha * uncensored
    return _masked_reduce(per_sample, mask, reduction)


def masked_cross_entropy(
    logits: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    weight: Tensor | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Cross-entropy over the labelled samples only.

    With ``reduction="mean"`` the result equals ``torch.nn.functional.cross_entropy`` on the
    unmasked samples, including its class-weighted mean (sum of weighted losses divided by the sum
    of the targets' weights). ``mask`` defaults to ``target >= 0``; masked targets may hold any
    value (e.g. -1).
    """
    _check_reduction(reduction)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (B, K), got shape {tuple(logits.shape)}")
    n_classes = logits.shape[1]
    target = target.reshape(-1).to(device=logits.device, dtype=torch.long)
    mask = _as_mask(mask, (target >= 0) & (target < n_classes))
    safe_target = torch.where(mask, target, torch.zeros_like(target))
    if bool(((safe_target < 0) | (safe_target >= n_classes)).any()):
        raise ValueError(f"class index outside [0, {n_classes}) in a labelled sample")
    if weight is not None:
        weight = weight.to(device=logits.device, dtype=logits.dtype)
    per_sample = F.cross_entropy(logits, safe_target, weight=weight, reduction="none")
    per_sample = torch.where(mask, per_sample, torch.zeros_like(per_sample))
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    if weight is None:
        denominator = mask.sum().to(total.dtype)
    else:
        denominator = (weight[safe_target] * mask.to(weight.dtype)).sum()
    return total / denominator.clamp(min=torch.finfo(total.dtype).tiny)


def _as_risk_vector(risk: Tensor) -> Tensor:
    if risk.ndim == 2 and risk.shape[1] == 1:
        return risk[:, 0]
    if risk.ndim != 1:
        raise ValueError(f"risk must be (B,) or (B, 1), got shape {tuple(risk.shape)}")
    return risk


def cox_partial_nll(
    risk: Tensor,
    time: Tensor,
    event: Tensor,
    mask: Tensor | None = None,
    *,
    reduction: Literal["mean", "sum"] = "mean",
) -> Tensor:
    """Negative Cox partial log-likelihood with Breslow's approximation for tied times.

    ``-sum_{i: event_i = 1} [risk_i - log sum_{j: time_j >= time_i} exp(risk_j)]``, where the
    risk set of a tied event time holds every subject with that time (Breslow). Only the labelled
    samples take part, in the sums and in the risk sets.

    Args:
        risk: ``(B,)`` or ``(B, 1)`` log-hazard ratios (higher = worse prognosis).
        time: ``(B,)`` follow-up times.
        event: ``(B,)`` 1 when the event was observed, 0 when censored (note: the opposite
            indicator to :func:`survival_nll`'s ``censored``).
        mask: ``(B,)`` True where the label is known; defaults to finite ``time`` and ``event``.
        reduction: ``"mean"`` divides by the number of observed events, ``"sum"`` does not.

    A batch without an observed event gives a zero loss that keeps the autograd graph intact.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum' for the Cox loss, got {reduction!r}")
    risk = _as_risk_vector(risk)
    time = time.reshape(-1).to(device=risk.device, dtype=torch.float64)
    event = event.reshape(-1).to(device=risk.device, dtype=torch.float64)
    if not time.shape == event.shape == risk.shape:
        raise ValueError(
            f"risk, time and event must have one value per sample, got {tuple(risk.shape)}, "
            f"{tuple(time.shape)}, {tuple(event.shape)}"
        )
    mask = _as_mask(mask, torch.isfinite(time) & torch.isfinite(event))
    if not bool(torch.isfinite(time[mask]).all()):
        raise ValueError("a labelled sample has a missing or infinite survival time")
    if not bool(((event[mask] == 0) | (event[mask] == 1)).all()):
        raise ValueError("event must be 0 (censored) or 1 (event) for every labelled sample")
    kept_risk = risk[mask]
    kept_time = time[mask]
    kept_event = event[mask].to(risk.dtype)
    n_events = kept_event.sum()
    if kept_risk.numel() == 0 or float(n_events) == 0.0:
        return risk.sum() * 0.0
    order = torch.argsort(kept_time, descending=True, stable=True)
    sorted_risk, sorted_time, sorted_event = kept_risk[order], kept_time[order], kept_event[order]
    log_cumulative = torch.logcumsumexp(sorted_risk, dim=0)
    _, counts = torch.unique_consecutive(sorted_time, return_counts=True)
    group_end = torch.cumsum(counts, dim=0) - 1
    log_risk_set = log_cumulative[torch.repeat_interleave(group_end, counts)]
    total = -(sorted_event * (sorted_risk - log_risk_set)).sum()
    return total if reduction == "sum" else total / n_events


def masked_bce(
    logits: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    pos_weight: float | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """Binary cross-entropy with logits over the labelled samples only.

    ``logits`` is ``(B,)`` or ``(B, 1)``; ``target`` holds 0 / 1. ``mask`` defaults to the samples
    whose target is 0 or 1 (e.g. -1 or NaN mark a missing label); a labelled target outside
    {0, 1} raises ``ValueError``. ``pos_weight`` multiplies the positive samples' term. The mean
    runs over the labelled samples.
    """
    _check_reduction(reduction)
    logits = _as_risk_vector(logits)
    target = target.reshape(-1).to(device=logits.device, dtype=logits.dtype)
    if target.shape != logits.shape:
        raise ValueError(f"target must hold {logits.shape[0]} values, got shape {tuple(target.shape)}")
    mask = _as_mask(mask, (target == 0) | (target == 1))
    safe_target = torch.where(mask, target, torch.zeros_like(target))
    if not bool(((safe_target == 0) | (safe_target == 1)).all()):
        raise ValueError("a labelled binary target is not 0 or 1")
    weight = (
        None if pos_weight is None else torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    )
    per_sample = F.binary_cross_entropy_with_logits(logits, safe_target, pos_weight=weight, reduction="none")
    return _masked_reduce(per_sample, mask, reduction)


def distillation_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    kind: DistillationKind,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Mean over the masked-in samples of how far the student's outputs are from the teacher's.

    The teacher is detached. ``kind``:

    * ``"softmax"`` (multi-class logits): ``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``;
    * ``"sigmoid"`` (binary logits or discrete-time hazard logits): the same with one Bernoulli
      distribution per output, summed over outputs;
    * ``"risk"`` (Cox risk scores): squared difference (no temperature).

    No sample in the mask gives a zero loss that keeps the graph intact.
    """
    if student.shape != teacher.shape or student.ndim != 2:
        raise ValueError(
            "student and teacher logits must both be (B, K), "
            f"got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    target = teacher.detach()
    if kind == "softmax":
        log_p_teacher = F.log_softmax(target / temperature, dim=1)
        log_p_student = F.log_softmax(student / temperature, dim=1)
        per_sample = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1) * temperature**2
    elif kind == "sigmoid":
        t_scaled, s_scaled = target / temperature, student / temperature
        p_teacher = torch.sigmoid(t_scaled)
        per_output = p_teacher * (F.logsigmoid(t_scaled) - F.logsigmoid(s_scaled)) + (1 - p_teacher) * (
            F.logsigmoid(-t_scaled) - F.logsigmoid(-s_scaled)
        )
        per_sample = per_output.sum(dim=1) * temperature**2
    elif kind == "risk":
        per_sample = ((student - target) ** 2).sum(dim=1)
    else:
        raise ValueError(f"kind must be 'softmax', 'sigmoid' or 'risk', got {kind!r}")
    mask = _as_mask(mask, torch.ones_like(per_sample, dtype=torch.bool))
    per_sample = torch.where(mask, per_sample, torch.zeros_like(per_sample))
    return per_sample.sum() / mask.sum().clamp(min=1).to(per_sample.dtype)


def _row_scaled_gram(rows: Tensor) -> Tensor:
    """``(B, B)`` Gram matrix of the flattened rows, each row divided by its Euclidean norm."""
    flat = rows.reshape(rows.shape[0], -1)
    gram = flat @ flat.t()
    return gram / torch.linalg.vector_norm(gram, dim=1, keepdim=True).clamp(min=1e-12)


def gene_guided_consistency(genes: Tensor, positions: Tensor) -> Tensor:
    """How differently a gene subspace's embeddings and the slide's sampling positions relate a batch.

    ``genes`` ``(B, D)``: the learned embeddings of one gene subspace (not detached, so the loss
    also trains the gene encoder); ``positions`` ``(B, G, …)``: each patient's sampling positions in
    ``G`` offset groups. With ``S(X)`` the Gram matrix of the rows of ``X``, each row divided by its
    Euclidean norm, the loss is ``sum_ij (S(genes) - mean_g S(positions_g))_ij² / B``: patients
    whose gene embeddings are alike should be read at alike positions. A batch of fewer than 2
    patients gives a zero that keeps the graph.
    """
    if genes.shape[0] != positions.shape[0] or positions.ndim < 3:
        raise ValueError(
            "genes must be (B, D) and positions (B, G, ...) for one batch, "
            f"got {tuple(genes.shape)} and {tuple(positions.shape)}"
        )
    batch = genes.shape[0]
    if batch < 2:
        return genes.sum() * 0.0 + positions.sum() * 0.0
    dtype = torch.promote_types(genes.dtype, torch.float32)
    with torch.autocast(genes.device.type, enabled=False):  # Gram matrices in full precision
        target = _row_scaled_gram(genes.to(dtype))
        per_group = positions.transpose(0, 1).to(dtype)
        read = torch.stack([_row_scaled_gram(group) for group in per_group]).mean(dim=0)
        return ((target - read) ** 2).sum() / batch


def survival_curve(logits: Tensor) -> Tensor:
    """Survival probabilities ``S_k = prod_{j<=k} (1 - sigmoid(logit_j))``, shape ``(B, n_bins)``."""
    return torch.exp(torch.cumsum(F.logsigmoid(-logits), dim=1))


def risk_from_logits(logits: Tensor) -> Tensor:
    """Risk score ``-sum_k S_k`` (higher = worse prognosis), shape ``(B,)``."""
    return -survival_curve(logits).sum(dim=1)


def survival_bins(
    train_times: npt.ArrayLike,
    train_events: npt.ArrayLike,
    n_bins: int = 4,
) -> npt.NDArray[np.float64]:
    """Bin edges for discrete-time survival, fitted on the training part only.

    The inner edges are the ``1/n_bins … (n_bins-1)/n_bins`` quantiles (quartiles by default) of the
    **uncensored** training times; the outer edges are 0 and ``+inf``, so every non-negative time
    falls in a bin. Entries with a missing time or event are ignored. Returns ``n_bins + 1`` edges.
    When no training event is observed the quantiles of all training times are used instead.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    times = np.asarray(train_times, dtype=np.float64).reshape(-1)
    events = np.asarray(train_events, dtype=np.float64).reshape(-1)
    if times.shape != events.shape:
        raise ValueError("train_times and train_events must have the same length")
    known = np.isfinite(times) & np.isfinite(events)
    uncensored = times[known & (events == 1)]
    if uncensored.size == 0:
        uncensored = times[known]
        if uncensored.size == 0:
            raise HistofuseError(
                "no survival time is known in the training split, so survival bins cannot be fitted.",
                fix="provide survival_time and event for training patients, or drop the survival task.",
            )
        logger.warning(
            "no uncensored survival time in the training split; bins use all %d training times",
            uncensored.size,
        )
    inner = np.quantile(uncensored, np.arange(1, n_bins) / n_bins) if n_bins > 1 else np.empty(0)
    inner = np.maximum(inner, 0.0)
    return np.concatenate([[0.0], inner, [np.inf]]).astype(np.float64)


def to_bin(times: npt.ArrayLike, edges: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Bin index of each time (``edges[k] <= t < edges[k+1]``); -1 where the time is missing.

    Negative times are put in the first bin and times beyond the last finite edge in the last bin.
    """
    values = np.asarray(times, dtype=np.float64).reshape(-1)
    edge_array = np.asarray(edges, dtype=np.float64).reshape(-1)
    n_bins = edge_array.size - 1
    if n_bins < 1:
        raise ValueError("edges must hold at least two values")
    out = np.full(values.shape, -1, dtype=np.int64)
    finite = ~np.isnan(values)
    index = np.searchsorted(edge_array, values[finite], side="right") - 1
    out[finite] = np.clip(index, 0, n_bins - 1)
    return out

"""Encoding batches of uint8 tiles on the device: preprocessing, autocast, and results fetched one batch late."""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from histofuse.features.encoders import Encoder

log = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True, kw_only=True)
class _Preprocess:
    """uint8 (B, H, W, 3) on the device → normalised float (B, 3, input_px, input_px)."""

    mean: torch.Tensor
    std: torch.Tensor
    input_px: int

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.input_px or x.shape[-2] != self.input_px:
            x = F.interpolate(
                x, size=(self.input_px, self.input_px), mode="bilinear", antialias=True, align_corners=False
            )
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)


def _preprocess_for(encoder: Encoder, device: torch.device) -> _Preprocess:
    def channel_vector(values: tuple[float, float, float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    return _Preprocess(
        mean=channel_vector(encoder.mean),
        std=channel_vector(encoder.std),
        input_px=encoder.input_px,
    )


def _autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    dtype = _AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_model(encoder: Encoder, device: torch.device, *, compile_model: bool) -> nn.Module:
    """The encoder on ``device`` in channels-last format, compiled when asked."""
    # channels-last suits cuDNN and oneDNN alike (about 1.5× faster on CPU for the CNN encoders)
    model = encoder.model.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    model.eval()
    if compile_model:
        log.info("compiling %s with torch.compile (one-off cost per process)", encoder.name)
        return torch.compile(model)  # type: ignore[return-value]
    return model


class _Fetched:
    """A batch's features on their way back to the host.

    On CUDA the copy is queued right behind the batch's kernels into page-locked memory, and an
    event marks its end: waiting for the event waits for this batch only, never for the batches
    queued after it (a plain ``.cpu()`` would wait for everything on the stream).
    """

    def __init__(self, features: torch.Tensor, device: torch.device) -> None:
        if device.type == "cuda":
            self.host = torch.empty(features.shape, dtype=features.dtype, pin_memory=True)
            self.host.copy_(features, non_blocking=True)
            self.event: torch.cuda.Event | None = torch.cuda.Event()
            self.event.record()
        else:
            self.host = features
            self.event = None

    def numpy(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()


def encode_batches(
    batches: Iterable[tuple[np.ndarray, torch.Tensor]],
    *,
    encoder: Encoder,
    model: nn.Module,
    device: torch.device,
    precision: str,
    pad_to: int | None = None,
) -> Generator[tuple[np.ndarray, np.ndarray], None, None]:
    """(tile indices, float32 features) of each batch, in batch order.

    Results are handed out one batch late: while the device encodes batch k, the host writes the
    features of batch k-1 and assembles batch k+1. ``pad_to`` pads short batches to that size (a
    compiled model then sees one shape only).
    """
    preprocess = _preprocess_for(encoder, device)
    non_blocking = device.type == "cuda"
    pending: tuple[np.ndarray, _Fetched] | None = None
    with torch.inference_mode():
        for indices, batch in batches:
            n = batch.shape[0]
            if pad_to is not None and n < pad_to:
                batch = torch.cat([batch, batch.new_zeros((pad_to - n, *batch.shape[1:]))])
            x = preprocess(batch.to(device, non_blocking=non_blocking))
            with _autocast(device, precision):
                features = model(x)
            fetched = _Fetched(features[:n].float(), device)
            if pending is not None:
                yield pending[0], pending[1].numpy()
            pending = (indices, fetched)
        if pending is not None:
            yield pending[0], pending[1].numpy()

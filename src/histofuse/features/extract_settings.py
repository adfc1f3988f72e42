"""Settings of feature extraction: how tiles are read and encoded, on which device and precision."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from histofuse.configuration import FeaturesConfig
from histofuse.errors import ConfigError
from histofuse.features.stain import STAIN_NORMS
from histofuse.slides.tiff_regions import check_region_decoder

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


_EXTRACTSETTINGS_DEFAULTS = FeaturesConfig()
"""Defaults of ``ExtractSettings``, from the configuration's description (:mod:`histofuse.configuration`)."""


@dataclass(frozen=True, kw_only=True)
class ExtractSettings:
    """How tiles are read and encoded."""

    batch_size: int = _EXTRACTSETTINGS_DEFAULTS.batch_size
    num_workers: int = _EXTRACTSETTINGS_DEFAULTS.num_workers
    """DataLoader worker processes reading tiles (0: read in the main process)."""
    device: str = _EXTRACTSETTINGS_DEFAULTS.device
    """auto | cpu | cuda (or cuda:N); auto uses CUDA when available."""
    precision: str = _EXTRACTSETTINGS_DEFAULTS.precision
    """auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16."""
    reader: str = "openslide"
    region_px: int = _EXTRACTSETTINGS_DEFAULTS.region_px
    """Side (read-level px) of the regions neighbouring tiles share; 0 reads every tile alone."""
    region_decoder: str = _EXTRACTSETTINGS_DEFAULTS.region_decoder
    """auto | reader | tifffile | gpu: who decodes the reads (see :mod:`histofuse.slides.tiff_regions`
    and :mod:`histofuse.features.device_regions`)."""
    compile: bool = _EXTRACTSETTINGS_DEFAULTS.compile
    """Compile the encoder with ``torch.compile`` (pays a one-off compile time per process)."""
    stain_norm: str | None = _EXTRACTSETTINGS_DEFAULTS.stain_norm
    """``None`` (off) or ``"macenko"``: normalise each tile's stains to ``stain_target``."""
    stain_target: str | None = _EXTRACTSETTINGS_DEFAULTS.stain_target
    """RGB image of H&E tissue whose stains tiles are normalised to (required with ``stain_norm``)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("features.batch_size must be at least 1.", column="features.batch_size")
        if self.num_workers < 0:
            raise ConfigError("features.num_workers must be 0 or more.", column="features.num_workers")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ConfigError(
                f"unknown device '{self.device}'.",
                column="features.device",
                fix=f"set features.device to one of: {', '.join(DEVICES)} (or cuda:N).",
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision '{self.precision}'.",
                column="features.precision",
                fix=f"set features.precision to one of: {', '.join(PRECISIONS)}.",
            )
        if self.region_px < 0:
            raise ConfigError(
                "features.region_px must be 0 or more.",
                column="features.region_px",
                fix="use e.g. 2048 (tiles share region reads) or 0 (every tile read alone).",
            )
        check_region_decoder(self.region_decoder, device=self.device, stain_norm=self.stain_norm)
        if self.stain_norm is not None and self.stain_norm not in STAIN_NORMS:
            raise ConfigError(
                f"unknown stain normalisation '{self.stain_norm}'.",
                column="features.stain_norm",
                fix=f"set features.stain_norm to null or one of: {', '.join(STAIN_NORMS)}.",
            )
        if self.stain_norm is not None and not self.stain_target:
            raise ConfigError(
                f"features.stain_norm is '{self.stain_norm}' but no target image is given.",
                column="features.stain_target",
                fix="set features.stain_target to an RGB image of H&E tissue to normalise to, "
                "or set features.stain_norm to null.",
            )


def resolve_device(name: str) -> torch.device:
    """The torch device for a ``device`` setting; asking for CUDA without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"features.device is '{name}' but PyTorch sees no CUDA GPU on this machine.",
            column="features.device",
            fix="set features.device to 'auto' or 'cpu', or run on a node with a GPU and a CUDA build of PyTorch.",
        )
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` → bf16 on CUDA, fp32 elsewhere; explicit values are kept."""
    if name != "auto":
        return name
    return "bf16" if device.type == "cuda" else "fp32"

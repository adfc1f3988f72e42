"""Macenko stain normalisation of H&E tiles to a target image (Macenko et al., ISBI 2009).

Each image is converted to optical density (OD = −ln((I + 1) / 255)); pixels with OD below
``beta`` in any channel (background) are left out of the fit. The stain vectors are the extreme
angles (``alpha`` and 100 − ``alpha`` percentiles) of the OD pixels projected on the plane of the
two largest eigenvectors of their covariance; haematoxylin is the vector with the larger red-channel
OD. Stain concentrations come from least squares; a source image is normalised by scaling its
concentrations so that their 99th percentiles match the target's, then rebuilt with the target's
stain matrix.

tiatoolbox has a Macenko implementation, but importing ``tiatoolbox.tools`` costs about ten seconds
in every extraction process and worker; this small numpy version runs in the tile readers instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histofuse.errors import ConfigError

log = logging.getLogger(__name__)

STAIN_NORMS = ("macenko",)
_IO = 255.0
_MIN_TISSUE_PIXELS = 64


@dataclass(frozen=True, kw_only=True)
class StainFit:
    """Stain matrix (3 × 2, unit columns: haematoxylin, eosin) and 99th-percentile concentrations."""

    stain_matrix: np.ndarray
    max_concentrations: np.ndarray


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) optical density of RGB uint8 pixels."""
    return -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / _IO)


def fit_stains(rgb: np.ndarray, *, beta: float = 0.15, alpha: float = 1.0) -> StainFit | None:
    """Macenko stain matrix and maximum concentrations of an RGB image; ``None`` without enough stain."""
    od = optical_density(rgb)
    tissue = od[(od >= beta).all(axis=1)]
    if len(tissue) < _MIN_TISSUE_PIXELS:
        return None
    _, eigvecs = np.linalg.eigh(np.cov(tissue.T))
    plane = eigvecs[:, 1:3]  # the two largest eigenvalues come last
    projected = tissue @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angles, [alpha, 100 - alpha])
    vectors = [plane @ np.array([np.cos(a), np.sin(a)]) for a in (low, high)]
    vectors = [v if v.sum() >= 0 else -v for v in vectors]  # eigenvector signs are arbitrary
    haem, eosin = sorted(vectors, key=lambda v: v[0], reverse=True)
    stains = np.stack([haem, eosin], axis=1)
    stains /= np.linalg.norm(stains, axis=0, keepdims=True)
    concentrations = np.linalg.lstsq(stains, od.T, rcond=None)[0]
    max_concentrations = np.percentile(concentrations, 99, axis=1)
    if not (np.isfinite(stains).all() and (max_concentrations > 0).all()):
        return None
    return StainFit(stain_matrix=stains, max_concentrations=max_concentrations)


@dataclass(frozen=True, kw_only=True)
class MacenkoNormaliser:
    """Normalises RGB uint8 tiles to a target's stains; picklable, so DataLoader workers can use it."""

    target: StainFit

    @classmethod
    def from_image(cls, rgb: np.ndarray, *, source: str | Path = "target image") -> MacenkoNormaliser:
        """Fit the target's stains; a target without enough stained pixels is a :class:`ConfigError`."""
        fit = fit_stains(rgb)
        if fit is None:
            raise ConfigError(
                "the stain normalisation target shows too little H&E stain to fit a stain matrix.",
                path=source,
                column="features.stain_target",
                fix="point features.stain_target at an RGB image of well-stained H&E tissue "
                "(a tile of a few hundred pixels, mostly tissue).",
            )
        return cls(target=fit)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """The tile rebuilt with the target's stains; tiles with too little stain are returned as they are."""
        fit = fit_stains(rgb)
        if fit is None:
            return rgb
        od = optical_density(rgb)
        concentrations = np.linalg.lstsq(fit.stain_matrix, od.T, rcond=None)[0]
        concentrations *= (self.target.max_concentrations / fit.max_concentrations)[:, None]
        rebuilt = _IO * np.exp(-(self.target.stain_matrix @ concentrations)) - 1.0
        return np.clip(np.rint(rebuilt), 0, 255).astype(np.uint8).T.reshape(rgb.shape)


def load_normaliser(method: str | None, target: str | Path | None) -> MacenkoNormaliser | None:
    """The normaliser for ``features.stain_norm`` (``None`` = off) fitted on the target image file."""
    if method is None:
        return None
    if method not in STAIN_NORMS:
        raise ConfigError(
            f"unknown stain normalisation '{method}'.",
            column="features.stain_norm",
            fix=f"set features.stain_norm to null or one of: {', '.join(STAIN_NORMS)}.",
        )
    if target is None:
        raise ConfigError(
            "stain normalisation needs a target image.",
            column="features.stain_target",
            fix="set features.stain_target to an RGB image of H&E tissue to normalise to.",
        )
    path = Path(target)
    if not path.is_file():
        raise ConfigError(
            "stain normalisation target image does not exist.",
            path=path,
            column="features.stain_target",
            fix="set features.stain_target to an existing image file (PNG, JPEG or TIFF).",
        )
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    normaliser = MacenkoNormaliser.from_image(rgb, source=path)
    log.info("Macenko stain target %s: stain matrix %s", path, np.round(normaliser.target.stain_matrix, 3).tolist())
    return normaliser

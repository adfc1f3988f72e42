"""Tissue masks on a low-resolution view of a slide, with a QC thumbnail.

Two maskers, the same algorithms as tiatoolbox's ``OtsuTissueMasker`` and ``MorphologicalMasker``
(Otsu threshold from scikit-image on OpenCV's grey conversion; the morphological one then drops
8-connected regions smaller than a minimum area and dilates with an elliptical kernel). They are
computed here with scikit-image and OpenCV directly because importing ``tiatoolbox.tools`` pulls in
torch, transformers and umap — about 13 s of CPU per slide job, against well under a second for
the mask itself; ``tests/test_slides.py`` checks that both give exactly tiatoolbox's masks.

histofuse adds a background filter so that near-white, unsaturated pixels (glass, scanner noise)
never count as tissue, which keeps an empty slide empty instead of letting Otsu split noise in two.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from histofuse.errors import ConfigError
from histofuse.io import atomic_path
from histofuse.slides.reader import SlideReader

log = logging.getLogger(__name__)

MASK_METHODS = ("otsu", "morphological")


@dataclass(frozen=True, kw_only=True)
class MaskSettings:
    """How a tissue mask is computed."""

    method: str = "otsu"
    mpp: float = 8.0
    """Resolution (µm/px) of the low-resolution view the mask is computed on."""
    max_background_grey: int = 220
    """Pixels brighter than this (0–255 grey) are background whatever the masker says."""
    min_saturation: int = 12
    """Pixels whose max−min over RGB is below this are background (glass, grey noise)."""
    kernel_um: float = 64.0
    """Morphological masker only: closing kernel size in µm."""
    min_region_um2: float = 20000.0
    """Morphological masker only: smallest tissue region kept, in µm²."""

    def __post_init__(self) -> None:
        if self.method not in MASK_METHODS:
            raise ConfigError(
                f"unknown tissue mask method '{self.method}'.",
                column="tissue_mask.method",
                fix=f"use one of: {', '.join(MASK_METHODS)}.",
            )
        if not self.mpp > 0:
            raise ConfigError("tissue_mask.mpp must be positive.", column="tissue_mask.mpp")


def otsu_mask(rgb: np.ndarray) -> np.ndarray:
    """Pixels darker than the Otsu threshold of the image's grey levels (tiatoolbox's Otsu masker)."""
    import cv2
    from skimage.filters import threshold_otsu

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if grey.min() == grey.max():  # a uniform image has no threshold: nothing stands out as tissue
        return np.zeros(grey.shape, dtype=bool)
    return grey < threshold_otsu(grey.ravel())


def morphological_mask(rgb: np.ndarray, *, kernel_px: int, min_region_px: int) -> np.ndarray:
    """Otsu mask without regions under ``min_region_px``, dilated by an elliptical ``kernel_px`` kernel.

    The same operations as tiatoolbox's ``MorphologicalMasker(kernel_size=…, min_region_size=…)``.
    """
    import cv2

    mask = otsu_mask(rgb).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < min_region_px) + 1
    mask[np.isin(labels, small)] = 0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel_px, kernel_px))
    return cv2.morphologyEx(mask, cv2.MORPH_DILATE, kernel).astype(bool)


def compute_tissue_mask(image: np.ndarray, *, mpp: float, settings: MaskSettings) -> np.ndarray:
    """Boolean tissue mask of an RGB uint8 image at ``mpp`` µm/px."""
    rgb = np.ascontiguousarray(image[..., :3])
    if settings.method == "otsu":
        mask = otsu_mask(rgb)
    else:
        mask = morphological_mask(
            rgb,
            kernel_px=max(1, int(round(settings.kernel_um / mpp))),
            min_region_px=max(1, int(round(settings.min_region_um2 / (mpp * mpp)))),
        )
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    saturation = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1).astype(np.int16)
    mask &= grey <= settings.max_background_grey
    mask &= saturation >= settings.min_saturation
    return mask


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Boolean image of the mask's boundary pixels."""
    from skimage.segmentation import find_boundaries

    return find_boundaries(mask, mode="inner")


def qc_thumbnail(image: np.ndarray, mask: np.ndarray, *, colour: tuple[int, int, int] = (0, 160, 0)) -> np.ndarray:
    """The thumbnail with the mask outline drawn (2 px) and the background dimmed."""
    from scipy.ndimage import binary_dilation

    out = image[..., :3].copy()
    out[~mask] = (out[~mask].astype(np.uint16) * 3 // 4 + 255 // 4).astype(np.uint8)
    outline = binary_dilation(mask_outline(mask), iterations=1)
    out[outline] = colour
    return out


def write_mask_png(mask: np.ndarray, path: str | Path, *, mpp: float) -> None:
    """Save a mask as an 8-bit PNG (tissue = 255) carrying its resolution in a text chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("histofuse:mask_mpp", f"{mpp:.6f}")
    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG", pnginfo=info)


def read_mask_png(path: str | Path) -> np.ndarray:
    """Load a mask written by :func:`write_mask_png`."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 127


def write_png(image: np.ndarray, path: str | Path) -> None:
    """Save an RGB image as PNG atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def mask_slide(reader: SlideReader, *, settings: MaskSettings, mask_png: str | Path, qc_png: str | Path) -> float:
    """Compute and save the tissue mask and QC thumbnail of an open slide; return the tissue fraction."""
    image, mpp = reader.thumbnail_at_mpp(settings.mpp)
    mask = compute_tissue_mask(image, mpp=mpp, settings=settings)
    write_mask_png(mask, mask_png, mpp=mpp)
    write_png(qc_thumbnail(image, mask), qc_png)
    fraction = float(mask.mean()) if mask.size else 0.0
    log.info(
        "%s: mask %dx%d px at %.2f µm/px, tissue %.1f %%",
        reader.info.path,
        mask.shape[1],
        mask.shape[0],
        mpp,
        100 * fraction,
    )
    return fraction

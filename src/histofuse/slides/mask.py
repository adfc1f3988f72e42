"""Tissue masks on a low-resolution view of a slide, with a QC thumbnail.

Two maskers, the same algorithms as tiatoolbox's ``OtsuTissueMasker`` and ``MorphologicalMasker``
(Otsu threshold from scikit-image on OpenCV's grey conversion; the morphological one then drops
8-connected regions smaller than a minimum area and dilates with an elliptical kernel). They are
computed here with scikit-image and OpenCV directly because importing ``tiatoolbox.tools`` pulls in
torch, transformers and umap — about 13 s of CPU per slide job, against well under a second for
the mask itself; ``tests/test_slides.py`` checks that both give exactly tiatoolbox's masks.

Two optional filters then clean the mask before tiling (see :mod:`histofuse.slides.filters`):
the blank-background filter (on by default) makes near-white or unstained grey pixels background and
drops specks of debris, which keeps an empty slide empty instead of letting Otsu split noise in two;
the pen-mark filter (off by default) removes marker ink of the chosen colours.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from histofuse.configuration import TissueMaskConfig
from histofuse.errors import ConfigError
from histofuse.io import atomic_path
from histofuse.slides.filters import PEN_COLOURS, blank_background_pixels, pen_mark_pixels, remove_small_regions
from histofuse.slides.reader_base import SlideReader

log = logging.getLogger(__name__)

MASK_METHODS = ("otsu", "morphological")


_MASKSETTINGS_DEFAULTS = TissueMaskConfig()
"""Defaults of ``MaskSettings``, from the configuration's description (:mod:`histofuse.configuration`)."""


@dataclass(frozen=True, kw_only=True)
class MaskSettings:
    """How a tissue mask is computed."""

    method: str = _MASKSETTINGS_DEFAULTS.method
    mpp: float = _MASKSETTINGS_DEFAULTS.mpp
    """Resolution (µm/px) of the low-resolution view the mask is computed on."""
    background_filter: bool = _MASKSETTINGS_DEFAULTS.background_filter
    """Blank-background filter: bright or grey pixels and specks of debris are never tissue."""
    max_background_grey: int = _MASKSETTINGS_DEFAULTS.max_background_grey
    """Background filter: pixels brighter than this (0–255 grey) are background."""
    min_saturation: int = _MASKSETTINGS_DEFAULTS.min_saturation
    """Background filter: pixels whose max−min over RGB is below this are background (glass, noise)."""
    min_tissue_um2: float = _MASKSETTINGS_DEFAULTS.min_tissue_um2
    """Background filter: tissue regions smaller than this (µm²) are dropped as debris."""
    pen_marks: tuple[str, ...] = tuple(_MASKSETTINGS_DEFAULTS.pen_marks)
    """Pen-mark filter: ink colours removed from the mask (any of blue, green, red, black; empty = off)."""
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
        for key in ("max_background_grey", "min_saturation"):
            if not 0 <= getattr(self, key) <= 255:
                raise ConfigError(
                    f"tissue_mask.{key} must lie in 0–255.",
                    column=f"tissue_mask.{key}",
                    fix="give an 8-bit level (e.g. 220 for max_background_grey, 12 for min_saturation).",
                )
        if not self.min_tissue_um2 >= 0:
            raise ConfigError("tissue_mask.min_tissue_um2 must be 0 or more.", column="tissue_mask.min_tissue_um2")
        if isinstance(self.pen_marks, str):
            raise ConfigError(
                "tissue_mask.pen_marks must be a list of colours, not a single string.",
                column="tissue_mask.pen_marks",
                fix=f"write e.g. pen_marks: [{', '.join(PEN_COLOURS)}], or [] to keep pen marks.",
            )
        unknown = sorted(set(self.pen_marks) - set(PEN_COLOURS))
        if unknown:
            raise ConfigError(
                f"unknown pen colour(s): {', '.join(unknown)}.",
                column="tissue_mask.pen_marks",
                fix=f"use any of: {', '.join(PEN_COLOURS)} (or [] to keep pen marks).",
            )


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
    """Boolean tissue mask of an RGB uint8 image at ``mpp`` µm/px, with the configured filters applied.

    Order: the masker, then blank background (pixels), then pen marks, then debris specks (so that
    fragments left around removed ink go too).
    """
    rgb = np.ascontiguousarray(image[..., :3])
    if settings.method == "otsu":
        mask = otsu_mask(rgb)
    else:
        mask = morphological_mask(
            rgb,
            kernel_px=max(1, int(round(settings.kernel_um / mpp))),
            min_region_px=max(1, int(round(settings.min_region_um2 / (mpp * mpp)))),
        )
    if settings.background_filter:
        mask &= ~blank_background_pixels(
            rgb, max_grey=settings.max_background_grey, min_saturation=settings.min_saturation
        )
    if settings.pen_marks:
        mask &= ~pen_mark_pixels(rgb, settings.pen_marks)
    if settings.background_filter and settings.min_tissue_um2 > 0:
        mask = remove_small_regions(mask, min_px=int(round(settings.min_tissue_um2 / (mpp * mpp))))
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

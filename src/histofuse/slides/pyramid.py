"""Write RGB images as tiled, JPEG-compressed pyramidal BigTIFFs that OpenSlide opens as slides.

Level 0 is the first page; each further level halves both sides (2×2 area average) and is stored
as its own page flagged as a reduced-resolution image (``subfiletype=1``). Resolution tags are in
pixels per centimetre and scaled with each level's downsample. JPEG tiles are stored in YCbCr with
2×2 chroma subsampling, as scanners do, which OpenSlide decodes to RGB.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from histofuse.io import atomic_path

log = logging.getLogger(__name__)

_UM_PER_CM = 1e4


def halve(image: np.ndarray) -> np.ndarray:
    """2×2 area average of an (H, W, 3) uint8 image; an odd last row/column is dropped."""
    from PIL import Image

    h, w = image.shape[0] // 2, image.shape[1] // 2
    if h == 0 or w == 0:
        raise ValueError(f"cannot halve an image of shape {image.shape}")
    cropped = np.ascontiguousarray(image[: 2 * h, : 2 * w])
    return np.asarray(Image.fromarray(cropped).reduce(2))


def _validate(image: np.ndarray, *, mpp: float, levels: int, tile: int) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 array of shape (H, W, 3), got {image.dtype} {image.shape}")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    if levels < 1:
        raise ValueError(f"levels must be at least 1, got {levels}")
    if tile <= 0 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    smallest = min(image.shape[:2]) >> (levels - 1)
    if smallest < 1:
        raise ValueError(f"image of shape {image.shape[:2]} is too small for {levels} levels")


def write_pyramidal_tiff(
    path: Path,
    image: np.ndarray,
    *,
    mpp: float,
    levels: int = 3,
    tile: int = 256,
    quality: int = 85,
) -> None:
    """Write ``image`` (RGB uint8, level 0 at ``mpp`` µm/px) as a ``levels``-level pyramid at ``path``."""
    import tifffile

    _validate(image, mpp=mpp, levels=levels, tile=tile)
    options: dict[str, Any] = {
        "tile": (tile, tile),
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": int(quality)},
        "resolutionunit": "CENTIMETER",
        "metadata": None,
    }
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
            level_image = np.ascontiguousarray(image)
            for level in range(levels):
                if level:
                    level_image = halve(level_image)
                per_cm = _UM_PER_CM / (mpp * 2**level)
                tif.write(
                    level_image,
                    subfiletype=1 if level else 0,
                    resolution=(per_cm, per_cm),
                    **options,
                )
    log.debug("wrote %s (%d×%d px, %d levels)", path, image.shape[1], image.shape[0], levels)

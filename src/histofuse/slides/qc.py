"""Quality-control image of a slide's tiles: the thumbnail with the tissue-mask outline and the tile grid.

The base image is the mask QC thumbnail written by :func:`histofuse.slides.mask.mask_slide` (outline
drawn, background dimmed); kept tiles are tinted and, where they are large enough on the thumbnail
to be told apart, outlined.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from histofuse.slides.mask import write_png

log = logging.getLogger(__name__)

TILE_COLOUR: tuple[int, int, int] = (30, 90, 230)
TINT = 0.35
"""Share of the tile colour blended into the pixels under kept tiles."""
MIN_OUTLINED_PX = 4
"""Tiles smaller than this on the thumbnail are tinted only (outlines would fill them)."""


def draw_tile_grid(
    image: np.ndarray,
    coords: np.ndarray,
    *,
    tile_px_level0: int,
    level0_size: tuple[int, int],
    colour: tuple[int, int, int] = TILE_COLOUR,
) -> np.ndarray:
    """A copy of the RGB thumbnail ``image`` with the tiles at level-0 ``coords`` (N, 2) drawn.

    ``level0_size`` is the slide's level-0 (width, height), which the thumbnail spans.
    """
    import cv2

    out = np.ascontiguousarray(image[..., :3]).copy()
    if len(coords) == 0:
        return out
    h, w = out.shape[:2]
    sx, sy = w / level0_size[0], h / level0_size[1]
    left = np.clip(np.floor(coords[:, 0] * sx).astype(np.int64), 0, w - 1)
    top = np.clip(np.floor(coords[:, 1] * sy).astype(np.int64), 0, h - 1)
    right = np.clip(np.ceil((coords[:, 0] + tile_px_level0) * sx).astype(np.int64), left + 1, w)
    bottom = np.clip(np.ceil((coords[:, 1] + tile_px_level0) * sy).astype(np.int64), top + 1, h)
    covered = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in zip(left, top, right, bottom, strict=True):
        covered[y0:y1, x0:x1] = True
    tint = np.asarray(colour, dtype=np.float32)
    out[covered] = (out[covered].astype(np.float32) * (1 - TINT) + tint * TINT).astype(np.uint8)
    if min(tile_px_level0 * sx, tile_px_level0 * sy) >= MIN_OUTLINED_PX:
        for x0, y0, x1, y1 in zip(left, top, right, bottom, strict=True):
            cv2.rectangle(out, (int(x0), int(y0)), (int(x1) - 1, int(y1) - 1), colour, 1)
    return out


def write_tile_qc(base_png: str | Path, coords: np.ndarray, attrs: dict[str, Any], out_png: str | Path) -> None:
    """Draw the tiles of a tiles file (``coords`` + its ``attrs``) on ``base_png``; save to ``out_png``."""
    with Image.open(base_png) as base:
        image = np.asarray(base.convert("RGB"))
    drawn = draw_tile_grid(
        image,
        np.asarray(coords, dtype=np.int64).reshape(-1, 2),
        tile_px_level0=int(attrs["tile_px_level0"]),
        level0_size=(int(attrs["level0_width"]), int(attrs["level0_height"])),
    )
    write_png(drawn, out_png)
    log.info("tile QC image with %d tiles written to %s", len(coords), out_png)

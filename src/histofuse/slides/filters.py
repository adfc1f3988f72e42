"""Artefact filters applied to a tissue mask before tiling: pen marks and blank background.

* :func:`pen_mark_pixels` finds marker ink by colour in OpenCV's HSV space (H in 0–179, S and V in
  0–255). H&E stains sit between purple and pink (H ≈ 125–175); the ink ranges avoid that band:
  red ink is saturated pure red (H ≤ 7 or ≥ 174 with S ≥ 110), blue ink is blue to cyan, green ink
  green, and black ink darker than any stained tissue. Isolated hits are dropped (3×3 opening)
  and the rest grown by a pixel to cover the ink's faded rim.
* :func:`blank_background_pixels` marks glass and scanner noise: pixels brighter than a grey level
  or too grey (low RGB spread) to be stained.
* :func:`remove_small_regions` drops 8-connected specks below an area (dust, debris), so a blank
  slide stays blank.
"""

from __future__ import annotations

import numpy as np

PEN_COLOURS: tuple[str, ...] = ("blue", "green", "red", "black")

# (hue ranges, min saturation, min value, max value) in OpenCV's 8-bit HSV
_INK_HSV: dict[str, tuple[tuple[tuple[int, int], ...], int, int, int]] = {
    "red": (((0, 7), (174, 179)), 110, 90, 255),
    "blue": (((90, 122),), 70, 40, 255),
    "green": (((35, 89),), 50, 30, 255),
}
_BLACK_MAX_VALUE = 45


def pen_mark_pixels(rgb: np.ndarray, colours: tuple[str, ...] = PEN_COLOURS) -> np.ndarray:
    """Boolean (H, W): pixels of an RGB uint8 image covered by ink of the given ``colours``."""
    import cv2

    unknown = sorted(set(colours) - set(PEN_COLOURS))
    if unknown:
        raise ValueError(f"unknown pen colour(s) {unknown}; known: {', '.join(PEN_COLOURS)}")
    rgb = np.ascontiguousarray(rgb[..., :3])
    ink = np.zeros(rgb.shape[:2], dtype=bool)
    if not colours:
        return ink
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    for colour in colours:
        if colour == "black":
            ink |= val <= _BLACK_MAX_VALUE
            continue
        ranges, min_sat, min_val, max_val = _INK_HSV[colour]
        in_hue = np.zeros_like(ink)
        for low, high in ranges:
            in_hue |= (hue >= low) & (hue <= high)
        ink |= in_hue & (sat >= min_sat) & (val >= min_val) & (val <= max_val)
    kernel = np.ones((3, 3), dtype=np.uint8)
    ink_u8 = cv2.morphologyEx(ink.astype(np.uint8), cv2.MORPH_OPEN, kernel)
    return cv2.dilate(ink_u8, kernel).astype(bool)


def blank_background_pixels(rgb: np.ndarray, *, max_grey: int, min_saturation: int) -> np.ndarray:
    """Boolean (H, W): pixels brighter than ``max_grey`` or whose RGB spread is below ``min_saturation``."""
    rgb = rgb[..., :3]
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    spread = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1).astype(np.int16)
    return (grey > max_grey) | (spread < min_saturation)


def remove_small_regions(mask: np.ndarray, *, min_px: int) -> np.ndarray:
    """``mask`` without 8-connected regions smaller than ``min_px`` pixels."""
    import cv2

    if min_px <= 1 or not mask.any():
        return mask.astype(bool)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_px
    return keep[labels]

"""Blank-background and pen-mark filters on real H&E tiles, and their effect on the tile grid."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from conftest import shared_file
from histofuse.errors import ConfigError
from histofuse.slides.filters import PEN_COLOURS, pen_mark_pixels, remove_small_regions
from histofuse.slides.mask import MaskSettings, compute_tissue_mask
from histofuse.slides.reader_base import SlideInfo
from histofuse.slides.tiling import TilingSettings, compute_tile_grid

TILE_MPP = 1.0  # the PNG tiles are treated as a slide scanned at 1 µm/px


def _tile(name: str) -> np.ndarray:
    with Image.open(shared_file("data", "tiles", name)) as image:
        return np.asarray(image.convert("RGB"))


def _as_slide(image: np.ndarray) -> SlideInfo:
    h, w = image.shape[:2]
    return SlideInfo(
        path="tile.png",
        width=w,
        height=h,
        mpp=TILE_MPP,
        mpp_source="test",
        level_count=1,
        level_dimensions=((w, h),),
        level_downsamples=(1.0,),
        vendor="png",
    )


def _red_ink(image: np.ndarray) -> np.ndarray:
    """Red marker ink by an RGB rule of its own: strong red, little green or blue."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return (r > 150) & (g < 80) & (b < 90) & (r - g > 100)


# A grid of 32 µm tiles; with threshold 0 any tissue pixel under a tile keeps it.
ANY_TISSUE = TilingSettings(mpp=TILE_MPP, tile_px=32, tissue_threshold=0.0)


def test_blank_tile_gives_no_tiles() -> None:
    image = _tile("no-tissue.png")
    info = _as_slide(image)
    mask = compute_tissue_mask(image, mpp=TILE_MPP, settings=MaskSettings())
    assert not mask.any()
    assert compute_tile_grid(info, mask, ANY_TISSUE).coords.shape == (0, 2)
    # without the filter, Otsu keeps specks of debris, and they would become tiles
    unfiltered = compute_tissue_mask(image, mpp=TILE_MPP, settings=MaskSettings(background_filter=False))
    assert unfiltered.any()
    assert len(compute_tile_grid(info, unfiltered, ANY_TISSUE).coords) > 0


def test_red_pen_is_removed_and_tissue_kept() -> None:
    image = _tile("tcga-red-pen.png")
    ink = _red_ink(image)
    assert ink.mean() > 0.05  # the tile really is marked
    plain = compute_tissue_mask(image, mpp=TILE_MPP, settings=MaskSettings())
    filtered = compute_tissue_mask(image, mpp=TILE_MPP, settings=MaskSettings(pen_marks=("red",)))
    assert plain[ink].mean() > 0.9  # Otsu alone takes the ink for tissue
    assert (~filtered[ink]).mean() > 0.95
    away_from_ink = ~binary_dilation(ink, iterations=8)
    kept = filtered[plain & away_from_ink].mean()
    assert kept > 0.97
    assert filtered.mean() > 0.3


def test_pen_filter_removes_ink_tiles() -> None:
    image = _tile("tcga-red-pen.png")
    info = _as_slide(image)
    ink = _red_ink(image)
    settings = TilingSettings(mpp=TILE_MPP, tile_px=32, tissue_threshold=0.5)
    plain = compute_tile_grid(info, compute_tissue_mask(image, mpp=TILE_MPP, settings=MaskSettings()), settings)
    mask = compute_tissue_mask(image, mpp=TILE_MPP, settings=MaskSettings(pen_marks=PEN_COLOURS))
    filtered = compute_tile_grid(info, mask, settings)

    def inked(coords: np.ndarray) -> int:
        return sum(ink[y : y + 32, x : x + 32].mean() > 0.5 for x, y in coords)

    assert inked(plain.coords) > 10
    assert inked(filtered.coords) == 0
    assert len(filtered.coords) > len(plain.coords) / 2


@pytest.mark.parametrize("name", ["tissue-level0-4302-10273-4814-10785.png", "high-nuclei-score-level0.png"])
def test_pen_filter_spares_stained_tissue(name: str) -> None:
    image = _tile(name)
    plain = compute_tissue_mask(image, mpp=TILE_MPP, settings=MaskSettings())
    filtered = compute_tissue_mask(image, mpp=TILE_MPP, settings=MaskSettings(pen_marks=PEN_COLOURS))
    assert filtered[plain].mean() > 0.98


def test_each_ink_colour_is_found_on_a_drawn_image() -> None:
    tissue = _tile("tissue-level0-4302-10273-4814-10785.png")[:120, :160].copy()
    inks = {"blue": (40, 70, 190), "green": (40, 150, 70), "black": (25, 25, 30), "red": (200, 25, 30)}
    for i, rgb in enumerate(inks.values()):
        tissue[10 + 25 * i : 25 + 25 * i, 20:140] = rgb  # a 15-px stroke per colour
    for i, colour in enumerate(inks):
        stroke = np.zeros(tissue.shape[:2], dtype=bool)
        stroke[10 + 25 * i : 25 + 25 * i, 20:140] = True
        found = pen_mark_pixels(tissue, (colour,))
        assert found[stroke].mean() == 1.0, colour
        others = tuple(c for c in inks if c != colour)
        assert not pen_mark_pixels(tissue, others)[stroke].any(), colour
        assert found[~binary_dilation(stroke, iterations=2)].mean() < 0.02, colour


def test_remove_small_regions() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[1:3, 1:3] = True  # 4 px
    mask[10:15, 10:15] = True  # 25 px
    kept = remove_small_regions(mask, min_px=5)
    assert not kept[1:3, 1:3].any() and kept[10:15, 10:15].all()
    assert (remove_small_regions(mask, min_px=0) == mask).all()


def test_filter_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="purple") as err:
        MaskSettings(pen_marks=("red", "purple"))
    assert "tissue_mask.pen_marks" in str(err.value)
    with pytest.raises(ConfigError, match="list of colours"):
        MaskSettings(pen_marks="red")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_background_grey"):
        MaskSettings(max_background_grey=300)
    with pytest.raises(ConfigError, match="min_tissue_um2"):
        MaskSettings(min_tissue_um2=-1)

"""The tile QC image: thumbnail with the mask outline and the tile grid drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_file
from histofuse.cli import main
from histofuse.slides.mask import MaskSettings, mask_slide, read_mask_png
from histofuse.slides.qc import draw_tile_grid, write_tile_qc
from histofuse.slides.reader import open_slide
from histofuse.slides.tiling import TilingSettings, compute_tile_grid, read_tiles_h5


def _grey(h: int, w: int) -> np.ndarray:
    return np.full((h, w, 3), 200, dtype=np.uint8)


def test_tiles_are_drawn_where_they_are() -> None:
    image = _grey(100, 200)  # a 2000 × 1000 px slide at a tenth of its size
    coords = np.array([[0, 0], [400, 300]], dtype=np.int64)
    drawn = draw_tile_grid(image, coords, tile_px_level0=200, level0_size=(2000, 1000))
    changed = (drawn != image).any(axis=-1)
    expected = np.zeros_like(changed)
    expected[0:20, 0:20] = True
    expected[30:50, 40:60] = True
    assert (changed == expected).all()
    # outlined: the border differs from the inside of a tile
    assert (drawn[0, 5] != drawn[10, 10]).any()
    assert (image == 200).all()  # the input is left alone


def test_small_tiles_are_tinted_without_outlines() -> None:
    image = _grey(50, 50)
    coords = np.array([[x, y] for y in range(0, 1000, 40) for x in range(0, 1000, 40)], dtype=np.int64)
    drawn = draw_tile_grid(image, coords, tile_px_level0=40, level0_size=(1000, 1000))
    assert len(np.unique(drawn.reshape(-1, 3), axis=0)) == 1  # 2-px tiles: one even tint
    assert (drawn != image).all()


def test_no_tiles_leaves_the_thumbnail_unchanged() -> None:
    image = _grey(10, 10)
    drawn = draw_tile_grid(image, np.zeros((0, 2), dtype=np.int64), tile_px_level0=64, level0_size=(100, 100))
    assert (drawn == image).all()


def test_tile_qc_on_the_real_slide(tmp_path: Path) -> None:
    with open_slide(shared_file("data", "slides", "cmu_small_region.svs")) as reader:
        mask_slide(reader, settings=MaskSettings(), mask_png=tmp_path / "m.png", qc_png=tmp_path / "qc.png")
        info = reader.info
    grid = compute_tile_grid(info, read_mask_png(tmp_path / "m.png"), TilingSettings())
    write_tile_qc(tmp_path / "qc.png", grid.coords, grid.attrs, tmp_path / "tiles.png")
    base = np.asarray(Image.open(tmp_path / "qc.png").convert("RGB"))
    drawn = np.asarray(Image.open(tmp_path / "tiles.png").convert("RGB"))
    assert drawn.shape == base.shape
    changed = (drawn != base).any(axis=-1).mean()
    scale = base.shape[1] / info.width
    tile_area = len(grid.coords) * (grid.attrs["tile_px_level0"] * scale) ** 2 / base[..., 0].size
    assert 0.5 * tile_area < changed < 2 * tile_area


def test_tile_command_writes_the_qc_image(tmp_path: Path) -> None:
    slide = shared_file("data", "slides", "cmu_small_region.svs")
    args = ["--slide", str(slide), "--slide-id", "cmu"]
    out = tmp_path / "tiles.h5"
    outputs = ["--mask", str(tmp_path / "m.png"), "--mask-qc", str(tmp_path / "qc.png"), "--out", str(out)]
    code = main(["tile", *args, *outputs, "--max-tiles", "5", "--seed", "3", "--qc", str(tmp_path / "qc_tiles.png")])
    assert code == 0
    coords, attrs = read_tiles_h5(out)
    assert len(coords) == 5 and attrs["max_tiles"] == 5 and attrs["n_tissue_tiles"] > 5
    assert (tmp_path / "m.png").is_file() and (tmp_path / "qc.png").is_file()
    assert (tmp_path / "qc_tiles.png").is_file()
    # the tile-grid QC image is not optional
    with pytest.raises(SystemExit):
        main(["tile", *args, *outputs])

"""Readers, tissue masks and tile grids on real slides and real tiles."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import shared_file
from histofuse.errors import ConfigError, SlideError
from histofuse.slides.mask import (
    MaskSettings,
    compute_tissue_mask,
    mask_slide,
    morphological_mask,
    otsu_mask,
    read_mask_png,
)
from histofuse.slides.reader import SlideInfo, open_slide
from histofuse.slides.tiling import (
    TilingSettings,
    compute_tile_grid,
    read_tiles_h5,
    tissue_fractions,
    write_tiles_h5,
)


def _info(width: int = 4096, height: int = 2048, mpp: float = 0.25) -> SlideInfo:
    return SlideInfo(
        path="x",
        width=width,
        height=height,
        mpp=mpp,
        mpp_source="metadata",
        level_count=3,
        level_dimensions=((width, height), (width // 2, height // 2), (width // 4, height // 4)),
        level_downsamples=(1.0, 2.0, 4.0),
        vendor="generic-tiff",
    )


def test_cmu_slide_opens_with_metadata_mpp() -> None:
    path = shared_file("data", "slides", "cmu_small_region.svs")
    with open_slide(path) as reader:
        assert reader.info.width == 2220 and reader.info.height == 2967
        assert reader.info.mpp == pytest.approx(0.499)
        assert reader.info.mpp_source == "metadata"
        region = reader.read_region((0, 0), 0, (64, 32))
        assert region.shape == (32, 64, 3) and region.dtype == np.uint8


def test_missing_mpp_names_the_slide_and_the_column() -> None:
    path = shared_file("data", "slides", "tcga-cr-7395-01a-01-ts1.svs")
    with pytest.raises(SlideError) as err:
        open_slide(path)
    message = str(err.value)
    assert "tcga-cr-7395" in message and "'mpp' column" in message
    with open_slide(path, mpp=0.5) as reader:
        assert reader.info.mpp == 0.5 and reader.info.mpp_source == "sheet"
        assert reader.info.level_count == 2


def test_broken_dicom_is_a_clear_error() -> None:
    path = shared_file("data", "slides", "broken_dicom_wsi.dcm")
    with pytest.raises(SlideError) as err:
        open_slide(path)
    assert "broken_dicom_wsi.dcm" in str(err.value) and "Fix:" in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SlideError, match="does not exist"):
        open_slide(tmp_path / "nope.svs")


def test_best_level_never_upsamples() -> None:
    info = _info(mpp=0.25)
    assert info.best_level_for_mpp(0.25) == 0
    assert info.best_level_for_mpp(0.5) == 1
    assert info.best_level_for_mpp(0.9) == 1
    assert info.best_level_for_mpp(1.0) == 2
    assert info.best_level_for_mpp(0.2) == 0


def test_mask_on_real_tiles() -> None:
    settings = MaskSettings()
    blank = np.asarray(Image.open(shared_file("data", "tiles", "no-tissue.png")).convert("RGB"))
    assert compute_tissue_mask(blank, mpp=1.0, settings=settings).mean() < 0.01
    tissue_file = next(Path(shared_file("data", "tiles")).glob("tissue-level0*.png"))
    tissue = np.asarray(Image.open(tissue_file).convert("RGB"))
    assert compute_tissue_mask(tissue, mpp=1.0, settings=settings).mean() > 0.3


def _tiatoolbox_reference_images() -> list[np.ndarray]:
    tiles = sorted(Path(shared_file("data", "tiles")).glob("*.png"))
    images = [np.asarray(Image.open(tile).convert("RGB")) for tile in tiles]
    with open_slide(shared_file("data", "slides", "cmu_small_region.svs")) as slide:
        thumbnail, _ = slide.thumbnail_at_mpp(8.0)
    return [*images, np.ascontiguousarray(thumbnail[..., :3])]


def test_maskers_equal_tiatoolbox_on_real_images() -> None:
    from tiatoolbox.tools.tissuemask import MorphologicalMasker, OtsuTissueMasker

    for image in _tiatoolbox_reference_images():
        expected = OtsuTissueMasker().fit_transform([image])[0]
        np.testing.assert_array_equal(otsu_mask(image), expected)
        for kernel_px, min_region_px in ((1, 1), (5, 40), (9, 400)):
            morph = MorphologicalMasker(kernel_size=kernel_px, min_region_size=min_region_px)
            expected = morph.fit_transform([image])[0]
            np.testing.assert_array_equal(
                morphological_mask(image, kernel_px=kernel_px, min_region_px=min_region_px), expected
            )


def test_mask_settings_reject_unknown_method() -> None:
    with pytest.raises(ConfigError, match="otsu, morphological"):
        MaskSettings(method="magic")


def test_tissue_fractions_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((50, 80)) > 0.6
    x0 = np.array([0, 100, 320, 600])
    y0 = np.array([0, 40, 200, 360])
    scale = (0.1, 0.1)  # 10 level-0 px per mask px
    got = tissue_fractions(mask, x0, y0, 40, scale)
    for i in range(4):
        left, top = x0[i] // 10, y0[i] // 10
        assert got[i] == pytest.approx(mask[top : top + 4, left : left + 4].mean())


def test_tile_grid_follows_the_mask_and_geometry() -> None:
    info = _info(width=4096, height=2048, mpp=0.25)
    mask = np.zeros((64, 128), dtype=bool)  # 32 level-0 px per mask px
    mask[:, :64] = True  # left half is tissue
    grid = compute_tile_grid(info, mask, TilingSettings(mpp=0.5, tile_px=256))
    assert grid.attrs["tile_px_level0"] == 512 and grid.attrs["read_level"] == 1
    assert grid.attrs["read_tile_px"] == 256
    assert len(grid.coords) == 4 * 4  # 2048/512 columns on the left half x 2048/512 rows
    assert (grid.coords[:, 0] + 512 <= 2048).all()
    overlapping = compute_tile_grid(info, mask, TilingSettings(mpp=0.5, tile_px=256, overlap_px=128))
    assert len(overlapping.coords) > len(grid.coords)
    empty = compute_tile_grid(info, np.zeros_like(mask), TilingSettings())
    assert empty.coords.shape == (0, 2)


def test_tiles_h5_is_self_describing(tmp_path: Path) -> None:
    info = _info()
    mask = np.ones((64, 128), dtype=bool)
    grid = compute_tile_grid(info, mask, TilingSettings())
    out = tmp_path / "t.h5"
    write_tiles_h5(grid, out, slide_id="S1", reader="openslide")
    coords, attrs = read_tiles_h5(out)
    assert coords.shape == grid.coords.shape
    for key in ("target_mpp", "level0_mpp", "read_level", "tile_px", "tile_px_level0", "tissue_threshold",
                "reader", "histofuse_version", "patch_size", "patch_level"):
        assert key in attrs, key
    with h5py.File(out) as h5:
        assert h5["coords"].attrs["patch_size"] == 256
    assert not list(tmp_path.glob(".*tmp"))


def test_mask_and_tiles_on_the_real_slide(tmp_path: Path) -> None:
    path = shared_file("data", "slides", "cmu_small_region.svs")
    with open_slide(path) as reader:
        fraction = mask_slide(reader, settings=MaskSettings(), mask_png=tmp_path / "m.png", qc_png=tmp_path / "qc.png")
        info = reader.info
    assert 0.1 < fraction < 0.9
    mask = read_mask_png(tmp_path / "m.png")
    grid = compute_tile_grid(info, mask, TilingSettings())
    assert 10 < len(grid.coords) < 100
    assert Image.open(tmp_path / "qc.png").size == (mask.shape[1], mask.shape[0])


def test_max_tiles_samples_a_seeded_subset_in_grid_order() -> None:
    info = _info(width=4096, height=4096, mpp=0.5)
    mask = np.ones((64, 64), dtype=bool)
    full = compute_tile_grid(info, mask, TilingSettings())
    assert len(full.coords) == 256
    capped = compute_tile_grid(info, mask, TilingSettings(max_tiles=20, seed=1))
    again = compute_tile_grid(info, mask, TilingSettings(max_tiles=20, seed=1))
    other = compute_tile_grid(info, mask, TilingSettings(max_tiles=20, seed=2))
    assert capped.coords.shape == (20, 2)
    np.testing.assert_array_equal(capped.coords, again.coords)
    assert not np.array_equal(capped.coords, other.coords)
    full_rows = {tuple(row) for row in full.coords}
    assert all(tuple(row) in full_rows for row in capped.coords)
    order = [list(map(tuple, full.coords)).index(tuple(row)) for row in capped.coords]
    assert order == sorted(order)
    assert capped.tissue.shape == (20,)
    assert (capped.attrs["max_tiles"], capped.attrs["n_tissue_tiles"]) == (20, 256)
    roomy = compute_tile_grid(info, mask, TilingSettings(max_tiles=1000))
    np.testing.assert_array_equal(roomy.coords, full.coords)
    with pytest.raises(ConfigError, match="max_tiles"):
        TilingSettings(max_tiles=0)


def test_tiles_h5_carries_clam_and_trident_attributes(tmp_path: Path) -> None:
    info = SlideInfo(**{**_info(width=4096, height=2048, mpp=0.25).__dict__, "objective_power": 40.0})
    grid = compute_tile_grid(info, np.ones((64, 128), dtype=bool), TilingSettings(mpp=0.5, tile_px=256))
    out = tmp_path / "tiles" / "S1.h5"
    write_tiles_h5(grid, out, slide_id="S1", reader="openslide")
    with h5py.File(out) as h5:
        attrs = dict(h5["coords"].attrs)
    assert attrs["patch_size"] == 256 and attrs["patch_level"] == 1
    assert attrs["patch_size_level0"] == 512
    np.testing.assert_allclose(attrs["downsample"], [2.0, 2.0])
    np.testing.assert_array_equal(attrs["level_dim"], [2048, 1024])
    np.testing.assert_array_equal(attrs["downsampled_level_dim"], [2048, 1024])
    assert attrs["level0_magnification"] == 40.0 and attrs["target_magnification"] == 20.0
    assert attrs["name"] == "S1" and attrs["save_path"] == str(out.parent)
    # CLAM reads `patch_size` pixels at `patch_level`: that must be the tile as histofuse reads it
    _, file_attrs = read_tiles_h5(out)
    assert file_attrs["read_tile_px"] == attrs["patch_size"]


def test_magnifications_are_left_out_when_unknown(tmp_path: Path) -> None:
    grid = compute_tile_grid(_info(), np.ones((64, 128), dtype=bool), TilingSettings())
    write_tiles_h5(grid, tmp_path / "t.h5", slide_id="S1", reader="openslide")
    with h5py.File(tmp_path / "t.h5") as h5:
        assert "level0_magnification" not in h5["coords"].attrs
        assert "target_magnification" not in h5["coords"].attrs

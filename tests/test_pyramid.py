from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from histofuse.slides.pyramid import halve, write_pyramidal_tiff
from histofuse.slides.reader import open_slide

REAL_SLIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides" / "cmu_small_region.svs"


def _smooth_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((height, width, 3)), (6, 6, 0))
    field = (field - field.min()) / (field.max() - field.min())
    return (40 + 200 * field).astype(np.uint8)


def test_halve_is_area_average() -> None:
    image = np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    reduced = halve(image)
    expected = image[:8, :6].reshape(4, 2, 3, 2, 3).astype(float).mean(axis=(1, 3))
    assert reduced.shape == (4, 3, 3)
    assert np.abs(reduced - expected).max() <= 0.5


def test_openslide_reads_pyramid(tmp_path: Path) -> None:
    import openslide

    image = _smooth_rgb(768, 1024)
    path = tmp_path / "slide.tiff"
    write_pyramidal_tiff(path, image, mpp=0.5)
    assert [p.name for p in tmp_path.iterdir()] == ["slide.tiff"]  # no temporary file left behind

    with openslide.OpenSlide(str(path)) as slide:
        assert slide.level_count == 3
        assert slide.level_dimensions == ((1024, 768), (512, 384), (256, 192))
        assert np.allclose(slide.level_downsamples, (1, 2, 4))
        props = slide.properties
        if "openslide.mpp-x" in props:
            assert float(props["openslide.mpp-x"]) == pytest.approx(0.5)
        else:
            assert props["tiff.ResolutionUnit"] == "centimeter"
            assert 1e4 / float(props["tiff.XResolution"]) == pytest.approx(0.5)
        region = np.asarray(slide.read_region((0, 0), 0, (1024, 768)))
        reduced = np.asarray(slide.read_region((0, 0), 2, (256, 192)))

    assert (region[..., 3] == 255).all()
    assert np.abs(region[..., :3].astype(int) - image).mean() < 8
    expected = halve(halve(image))
    assert np.abs(reduced[..., :3].astype(int) - expected).mean() < 8


def test_histofuse_reader_reports_mpp(tmp_path: Path) -> None:
    path = tmp_path / "slide.tiff"
    write_pyramidal_tiff(path, _smooth_rgb(512, 640), mpp=0.25, levels=2)
    with open_slide(path) as reader:
        assert reader.info.mpp == pytest.approx(0.25)
        assert reader.info.level_count == 2


def test_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        write_pyramidal_tiff(tmp_path / "x.tiff", np.zeros((64, 64), np.uint8), mpp=0.5)
    with pytest.raises(ValueError, match="too small"):
        write_pyramidal_tiff(tmp_path / "x.tiff", np.zeros((4, 64, 3), np.uint8), mpp=0.5, levels=4)
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not REAL_SLIDE.exists(), reason=f"real test slide not found at {REAL_SLIDE}")
def test_pyramid_from_real_slide(tmp_path: Path) -> None:
    with open_slide(REAL_SLIDE) as source:
        mpp = source.info.mpp
        image = source.read_region((0, 0), 0, (source.info.width, source.info.height))
    path = tmp_path / "cmu.tiff"
    write_pyramidal_tiff(path, image, mpp=mpp, levels=3)
    with open_slide(path) as reader:
        assert reader.info.mpp == pytest.approx(0.499, abs=1e-3)
        assert reader.info.level_count == 3
        assert reader.info.level_downsamples == pytest.approx((1, 2, 4), rel=1e-3)
        assert (reader.info.width, reader.info.height) == (image.shape[1], image.shape[0])
        crop = reader.read_region((0, 0), 0, (512, 512))
    assert np.abs(crop.astype(int) - image[:512, :512]).mean() < 8

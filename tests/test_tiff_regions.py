"""Region reads decoded from the TIFF's JPEG tiles give exactly OpenSlide's pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import shared_file
from histofuse.errors import SlideError
from histofuse.features.extract_settings import ExtractSettings
from histofuse.features.regions import ReadJob
from histofuse.features.slide_reads import _tiff_reads
from histofuse.slides.pyramid import write_pyramidal_tiff
from histofuse.slides.reader import open_slide
from histofuse.slides.tiff_regions import TiffRegionDecoder

CMU = ("data", "slides", "cmu_small_region.svs")
TCGA = ("data", "slides", "tcga-cr-7395-01a-01-ts1.svs")
# inside, across stored-tile borders, over the top-left and bottom-right edges, outside, a 1-px sliver
REGIONS = (
    ((0, 0), (256, 256)),
    ((100, 37), (1000, 700)),
    ((-50, -20), (300, 300)),
    ((2100, 2900), (400, 400)),
    ((5000, 5000), (64, 64)),
    ((517, 33), (1, 97)),
)


@pytest.fixture(scope="module")
def cmu_pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-level JPEG (YCbCr) pyramid of the CMU slide, 256-px tiles that do not align with the SVS's 240.

    The image is cropped to a multiple of 4 px so that the levels' downsamples are exactly 2 and 4.
    """
    with open_slide(shared_file(*CMU)) as source:
        width, height = source.info.width // 4 * 4, source.info.height // 4 * 4
        image = source.read_region((0, 0), 0, (width, height))
        mpp = source.info.mpp
    path = tmp_path_factory.mktemp("tiff-regions") / "cmu_pyramid.tiff"
    write_pyramidal_tiff(path, image, mpp=mpp, levels=3)
    return path


def _compare(path: Path, level: int, regions: tuple[tuple[tuple[int, int], tuple[int, int]], ...]) -> None:
    with open_slide(path) as reader:
        decoder = TiffRegionDecoder(path, reader.info)
        try:
            assert level in decoder.levels
            for location, size in regions:
                assert decoder.can_read(location, level)
                expected = reader.read_region(location, level, size)
                got = decoder.read_region(location, level, size)
                assert got.shape == expected.shape == (size[1], size[0], 3)
                np.testing.assert_array_equal(got, expected, err_msg=f"{path.name} level {level} {location} {size}")
        finally:
            decoder.close()


def test_aperio_svs_pixels_equal_openslide() -> None:
    # Aperio stores RGB-coded JPEG tiles with shared tables: the decoder must not treat them as YCbCr.
    _compare(shared_file(*CMU), 0, REGIONS)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_pyramid_levels_pixels_equal_openslide(cmu_pyramid: Path, level: int) -> None:
    d = 2**level
    regions = tuple(((x * d, y * d), size) for (x, y), size in REGIONS)
    _compare(cmu_pyramid, level, regions)


def test_reads_between_pixels_of_a_level_are_left_to_the_reader(cmu_pyramid: Path) -> None:
    with open_slide(cmu_pyramid) as reader:
        decoder = TiffRegionDecoder(cmu_pyramid, reader.info)
    assert decoder.can_read((4, 8), 2) and not decoder.can_read((5, 8), 2)
    assert decoder.can_read((5, 8), 0)
    with pytest.raises(SlideError, match="between its pixels") as err:
        decoder.read_region((5, 8), 2, (16, 16))
    assert "cmu_pyramid.tiff" in str(err.value) and "region_decoder" in str(err.value)
    decoder.close()


def test_jpeg2000_slide_has_no_qualifying_level_and_tifffile_choice_fails_loudly() -> None:
    path = shared_file(*TCGA)
    with open_slide(path, mpp=0.5) as reader:
        info = reader.info
    decoder = TiffRegionDecoder(path, info)
    assert decoder.levels == ()
    decoder.close()
    jobs = [ReadJob(location=(0, 0), size=(256, 256), indices=np.array([0]), offsets=np.array([[0, 0]]))]
    assert _tiff_reads(path, info, jobs, 0, "auto") == 0
    with pytest.raises(SlideError, match="region_decoder is 'tifffile'") as err:
        _tiff_reads(path, info, jobs, 0, "tifffile")
    assert path.name in str(err.value) and "'auto'" in str(err.value)


def test_truncated_tile_data_is_a_clear_error(tmp_path: Path, cmu_pyramid: Path) -> None:
    data = cmu_pyramid.read_bytes()
    with open_slide(cmu_pyramid) as reader:
        info = reader.info
    clipped = tmp_path / "clipped.tiff"
    decoder = TiffRegionDecoder(cmu_pyramid, info)
    last = int(decoder._levels[0].page.dataoffsets[-1])
    decoder.close()
    clipped.write_bytes(data[: last + 10])
    decoder = TiffRegionDecoder(clipped, info)
    with pytest.raises(SlideError, match="truncated") as err:
        decoder.read_region((info.width - 10, info.height - 10), 0, (10, 10))
    assert "clipped.tiff" in str(err.value)
    decoder.close()


def test_unknown_region_decoder_is_a_config_error() -> None:
    from histofuse.errors import ConfigError

    with pytest.raises(ConfigError, match="features.region_decoder"):
        ExtractSettings(region_decoder="nvjpeg")

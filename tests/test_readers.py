"""Both slide readers (OpenSlide, tiatoolbox) on the real slides and on a pyramid built from one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, shared_file
from histofuse.errors import SlideError
from histofuse.slides.pyramid import write_pyramidal_tiff
from histofuse.slides.reader import READERS, SlideReader, open_slide

BACKENDS = ("openslide", "tiatoolbox")
CMU = ("data", "slides", "cmu_small_region.svs")
TCGA = ("data", "slides", "tcga-cr-7395-01a-01-ts1.svs")
DICOM = ("data", "slides", "broken_dicom_wsi.dcm")
# top-left inside, straddling the right/bottom edges, and a 1-px sliver
REGIONS = (((0, 0), (256, 256)), ((1000, 1500), (300, 200)), ((2100, 2900), (256, 128)), ((517, 33), (1, 97)))


@pytest.fixture(scope="module")
def cmu_pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-level JPEG BigTIFF pyramid of the whole CMU slide at its own resolution."""
    with open_slide(shared_file(*CMU)) as source:
        image = source.read_region((0, 0), 0, (source.info.width, source.info.height))
        mpp = source.info.mpp
    path = tmp_path_factory.mktemp("pyramid") / "cmu_pyramid.tiff"
    write_pyramidal_tiff(path, image, mpp=mpp, levels=3)
    return path


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def both_cmu() -> Iterator[tuple[SlideReader, SlideReader]]:
    path = shared_file(*CMU)
    with open_slide(path, reader="openslide") as a, open_slide(path, reader="tiatoolbox") as b:
        yield a, b


def test_both_backends_are_registered() -> None:
    assert set(BACKENDS) <= set(READERS)


def test_cmu_resolution_from_metadata(backend: str) -> None:
    with open_slide(shared_file(*CMU), reader=backend) as reader:
        assert reader.name == backend
        assert (reader.info.width, reader.info.height) == (2220, 2967)
        assert reader.info.mpp == pytest.approx(0.499)
        assert reader.info.mpp_source == "metadata"
        assert reader.info.objective_power == pytest.approx(20.0)


def test_backends_return_the_same_pixels_on_cmu(both_cmu: tuple[SlideReader, SlideReader]) -> None:
    ours, theirs = both_cmu
    assert ours.info.level_dimensions == theirs.info.level_dimensions
    for location, size in REGIONS:
        a = ours.read_region(location, 0, size)
        b = theirs.read_region(location, 0, size)
        assert a.shape == b.shape == (size[1], size[0], 3)
        assert a.dtype == b.dtype == np.uint8
        # the same JPEG decoder behind both; allow at most a grey level for decoder rounding
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, location


def test_outside_the_slide_is_white(backend: str) -> None:
    with open_slide(shared_file(*CMU), reader=backend) as reader:
        region = reader.read_region((2200, 2950), 0, (64, 64))
    assert (region[20:, :] == 255).all() and (region[:, 20:] == 255).all()


def test_thumbnails_agree(both_cmu: tuple[SlideReader, SlideReader]) -> None:
    (a, mpp_a), (b, mpp_b) = (reader.thumbnail_at_mpp(8.0) for reader in both_cmu)
    assert a.shape == b.shape and mpp_a == pytest.approx(mpp_b)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 0.5


def test_missing_mpp_is_a_clear_error_with_either_backend(backend: str) -> None:
    path = shared_file(*TCGA)
    with pytest.raises(SlideError) as err:
        open_slide(path, reader=backend)
    message = str(err.value)
    assert "tcga-cr-7395-01a-01-ts1.svs" in message
    assert "add an 'mpp' column to the slides sheet" in message


def test_jpeg2000_frozen_section_reads_with_sheet_mpp(backend: str) -> None:
    with open_slide(shared_file(*TCGA), reader=backend, mpp=0.5) as reader:
        assert reader.info.mpp == 0.5 and reader.info.mpp_source == "sheet"
        assert reader.info.level_count == 2
        assert reader.info.level_dimensions[0] == (4443, 3567)
        region = reader.read_region((2000, 1500), 0, (128, 128))
        thumbnail, mpp = reader.thumbnail_at_mpp(8.0)
    assert region.shape == (128, 128, 3) and region.std() > 5  # real tissue, decoded
    assert mpp == pytest.approx(8.0, rel=0.01) and thumbnail.shape[1] == round(4443 * 0.5 / mpp)


def test_sheet_mpp_overrides_metadata(backend: str) -> None:
    with open_slide(shared_file(*CMU), reader=backend, mpp=0.25) as reader:
        assert reader.info.mpp == 0.25 and reader.info.mpp_source == "sheet"
    with open_slide(shared_file(*CMU), reader=backend, mpp=float("nan")) as reader:
        assert reader.info.mpp_source == "metadata"  # an empty sheet cell


def test_broken_dicom_is_a_slide_error_naming_the_file(backend: str) -> None:
    with pytest.raises(SlideError) as err:
        open_slide(shared_file(*DICOM), reader=backend)
    message = str(err.value)
    assert "broken_dicom_wsi.dcm" in message and "Fix:" in message


def test_missing_file_and_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(SlideError, match="does not exist"):
        open_slide(tmp_path / "absent.svs", reader="tiatoolbox")
    with pytest.raises(SlideError, match="openslide, tiatoolbox"):
        open_slide(shared_file(*CMU), reader="bioformats")


def test_pyramid_levels_and_pixels_agree(cmu_pyramid: Path) -> None:
    with open_slide(cmu_pyramid, reader="openslide") as ours, open_slide(cmu_pyramid, reader="tiatoolbox") as theirs:
        for reader in (ours, theirs):
            assert reader.info.level_count == 3
            assert reader.info.mpp == pytest.approx(0.499, rel=1e-3)
            assert reader.info.level_dimensions == ((2220, 2967), (1110, 1483), (555, 741))
        np.testing.assert_allclose(theirs.info.level_downsamples, ours.info.level_downsamples, rtol=1e-3)
        for location, size in REGIONS[:2]:
            a = ours.read_region(location, 0, size).astype(int)
            b = theirs.read_region(location, 0, size).astype(int)
            assert np.abs(a - b).max() <= 1
        # coarser levels: OpenSlide's downsample is 2.0003 (from the level sizes), tiatoolbox's
        # exactly 2, so the same level-0 corner lands a fraction of a pixel apart
        a = ours.read_region((512, 768), 2, (128, 128)).astype(int)
        b = theirs.read_region((512, 768), 2, (128, 128)).astype(int)
        assert np.abs(a - b).mean() < 4


def test_tiatoolbox_is_imported_only_when_chosen() -> None:
    code = (
        "import sys\n"
        "from histofuse.slides.reader import open_slide\n"
        f"open_slide({str(shared_file(*CMU))!r}).close()\n"
        "assert 'tiatoolbox' not in sys.modules, 'tiatoolbox imported by the OpenSlide backend'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]

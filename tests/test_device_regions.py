"""Stored JPEG tiles decoded by torchvision (on the GPU with ``region_decoder: gpu``) against tifffile.

The CPU half checks the byte extraction (complete streams from the real Aperio SVS and a 3-level
JPEG pyramid, decoded with torchvision's CPU decoder) and the whole device path run on the CPU,
plus the fallbacks. The GPU half (skipped without CUDA) checks the pixels decoded by nvJPEG and
the features computed from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tifffile
import torch

from conftest import REPO, shared_file
from histofuse.errors import ConfigError, SlideError
from histofuse.features.device_regions import DeviceTileChunks, device_batches
from histofuse.features.encoders import Encoder
from histofuse.features.extract import ExtractSettings, RegionTileDataset, extract_slide_features, read_features
from histofuse.features.regions import plan_reads
from histofuse.slides.jpeg_tiles import ADOBE_RGB, JpegTileReader, complete_stream
from histofuse.slides.pyramid import write_pyramidal_tiff
from histofuse.slides.reader import open_slide
from histofuse.slides.tiff_regions import check_region_decoder

CMU = ("data", "slides", "cmu_small_region.svs")
TOLERANCE = 2
"""Grey levels two JPEG decoders may differ by (chroma upsampling and IDCT rounding)."""
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (runs on the GPU node)")
# Measured on an H200 (torchvision 0.26, benchmarks/results/2026-12-04_h200_gpu_jpeg_agreement.jsonl):
# nvJPEG ignores the colour transform of RGB-coded (Aperio) tiles (mean 49 grey levels off) and
# differs from libjpeg-turbo by more than 2 grey levels on 7-11 % of the values of YCbCr tiles
# (max 55). Until a decoder meets the bound these tests are expected to fail on a GPU; `strict`
# makes them fail once one passes, so the bound is revisited.
NVJPEG_DIFFERS = pytest.mark.xfail(
    CUDA, reason="nvJPEG's pixels are not within 2 grey levels of libjpeg-turbo (measured)", strict=True
)


@pytest.fixture(scope="module")
def svs() -> Path:
    return shared_file(*CMU)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory, svs: Path) -> Path:
    """A 3-level JPEG (YCbCr) pyramid of the CMU slide with 256-px tiles (the SVS has 240-px RGB tiles)."""
    with open_slide(svs) as source:
        width, height = source.info.width // 4 * 4, source.info.height // 4 * 4
        image = source.read_region((0, 0), 0, (width, height))
        mpp = source.info.mpp
    path = tmp_path_factory.mktemp("device-regions") / "cmu_pyramid.tiff"
    write_pyramidal_tiff(path, image, mpp=mpp, levels=3)
    return path


def _info(path: Path) -> Any:
    with open_slide(path) as reader:
        return reader.info


# ------------------------------------------------------------------------------ the byte extraction


def _stored_tiles(path: Path, page_index: int) -> tuple[Any, list[tuple[np.ndarray, bytes]]]:
    """tifffile's decoding of every stored tile of a page, with the tile's raw bytes."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[page_index]
        out = []
        for index, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts, strict=True)):
            tif.filehandle.seek(offset)
            data = tif.filehandle.read(count)
            pixels, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
            out.append((pixels.reshape(pixels.shape[-3:])[..., :3], data))
        return (page.jpegtables, int(page.photometric)), out


def _decode_cpu(stream: bytes) -> np.ndarray:
    from torchvision.io import ImageReadMode, decode_jpeg

    data = torch.frombuffer(bytearray(stream), dtype=torch.uint8)
    return decode_jpeg(data, mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()


def _max_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def _page_cases(svs: Path, pyramid: Path) -> list[tuple[Path, int]]:
    return [(svs, 0), (pyramid, 0), (pyramid, 1), (pyramid, 2)]


def test_complete_streams_decode_like_tifffile(svs: Path, pyramid: Path) -> None:
    from PIL import Image

    for path, page_index in _page_cases(svs, pyramid):
        (tables, photometric), tiles = _stored_tiles(path, page_index)
        # Aperio shares one JPEGTables tag (abbreviated tile streams); tifffile writes whole streams
        assert bool(tables) == (path == svs), f"{path.name} page {page_index}"
        for expected, raw in tiles:
            stream = complete_stream(raw, tables, rgb=photometric == 2)
            got = _decode_cpu(stream)
            assert _max_difference(got, expected) <= TOLERANCE, f"{path.name} page {page_index}"
        # PIL reads the same streams (a second, independent decoder front end)
        with Image.open(__import__("io").BytesIO(stream)) as image:
            assert _max_difference(np.asarray(image.convert("RGB")), expected) <= TOLERANCE


def test_aperio_tiles_are_rgb_coded(svs: Path) -> None:
    """Without the Adobe marker a decoder takes Aperio's RGB-coded tiles for YCbCr: colours go wrong."""
    (tables, photometric), tiles = _stored_tiles(svs, 0)
    assert photometric == 2
    expected, raw = tiles[len(tiles) // 2]
    as_ycbcr = _decode_cpu(complete_stream(raw, tables, rgb=False))
    assert _max_difference(as_ycbcr, expected) > 20
    assert ADOBE_RGB in complete_stream(raw, tables, rgb=True)


def test_complete_stream_refuses_non_jpeg() -> None:
    with pytest.raises(ValueError, match="SOI"):
        complete_stream(b"\x00\x01", None, rgb=False)
    with pytest.raises(ValueError, match="JPEGTables"):
        complete_stream(b"\xff\xd8\xff\xd9", b"\xff\xd8\x00", rgb=False)


# ------------------------------------------------------------------------- the device path on a device


def _coords(info: Any, level: int, read_px: int) -> np.ndarray:
    """A grid over the whole level, one tile over the top-left corner and tiles past the far edges."""
    d = int(round(info.level_downsamples[level]))
    width, height = info.level_dimensions[level]
    xs = np.arange(0, width, read_px)
    ys = np.arange(0, height, read_px)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    extra = np.array([[-read_px // 3, -read_px // 5], [width - read_px // 2, 7]])
    return np.concatenate([grid, extra]).astype(np.int64) * d


def _tiles_two_ways(
    path: Path, level: int, *, read_px: int, tile_px: int, device: torch.device, region_px: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """The tiles as the CPU path cuts them (tifffile decoding) and as the device path does."""
    info = _info(path)
    coords = _coords(info, level, read_px)
    jobs = plan_reads(
        coords, downsample=float(info.level_downsamples[level]), read_tile_px=read_px, region_px=region_px
    )
    dataset = RegionTileDataset(
        slide_path=path, jobs=jobs, read_level=level, read_tile_px=read_px, tile_px=tile_px,
        reader="openslide", mpp=None, tiff_info=info,
    )  # fmt: skip
    expected = np.zeros((len(coords), tile_px, tile_px, 3), dtype=np.uint8)
    for item in range(len(dataset)):
        indices, tiles = dataset[item]
        expected[indices] = tiles.numpy()
    dataset.close()
    chunks = DeviceTileChunks(
        slide_path=path, reader=JpegTileReader(path, info), jobs=jobs, read_level=level,
        read_tile_px=read_px, tile_px=tile_px, device=device, group_tiles=16,
    )  # fmt: skip
    got = np.zeros_like(expected)
    seen = np.zeros(len(coords), dtype=bool)
    try:
        for indices, tiles in device_batches(iter(chunks), 24):
            assert tiles.device.type == device.type and tiles.dtype == torch.uint8
            got[indices] = tiles.cpu().numpy()
            seen[indices] = True
    finally:
        chunks.close()
    assert seen.all()
    return expected, got


CASES = [
    # (slide, level, read px, tile px): same size, resized down (a 40×-style read), resized up
    ("svs", 0, 256, 256),
    ("svs", 0, 300, 224),
    ("pyramid", 0, 256, 256),
    ("pyramid", 1, 128, 128),
    ("pyramid", 2, 96, 128),
]


def _slide(name: str, svs: Path, pyramid: Path) -> Path:
    return svs if name == "svs" else pyramid


@pytest.mark.parametrize(("name", "level", "read_px", "tile_px"), CASES)
def test_device_path_on_the_cpu_matches_tifffile(
    name: str, level: int, read_px: int, tile_px: int, svs: Path, pyramid: Path
) -> None:
    expected, got = _tiles_two_ways(
        _slide(name, svs, pyramid), level, read_px=read_px, tile_px=tile_px, device=torch.device("cpu")
    )
    # the same libjpeg-turbo decodes both: equal pixels, but resizing runs in float here
    assert _max_difference(got, expected) <= (0 if read_px == tile_px else 1)
    assert (got[-2, :10, :10] == 255).all()  # the tile over the top-left corner is white outside the slide


@needs_cuda
@NVJPEG_DIFFERS
@pytest.mark.parametrize(("name", "level", "read_px", "tile_px"), CASES)
def test_gpu_pixels_within_two_grey_levels(
    name: str, level: int, read_px: int, tile_px: int, svs: Path, pyramid: Path
) -> None:
    expected, got = _tiles_two_ways(
        _slide(name, svs, pyramid), level, read_px=read_px, tile_px=tile_px, device=torch.device("cuda")
    )
    assert _max_difference(got, expected) <= TOLERANCE + (0 if read_px == tile_px else 1)


# --------------------------------------------------------------------------- features and fallbacks


def _small_cnn() -> Encoder:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 7, stride=4), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3, stride=2),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    )  # fmt: skip
    model.eval().requires_grad_(False)
    return Encoder(
        name="test_cnn", model=model, input_px=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        dim=64, weights_sha256="seed-0", weights_path="",
    )  # fmt: skip


def _resnet50_trunc() -> Encoder:
    """The benchmarks' ResNet50-trunc (CLAM's encoder) with seeded random weights, no download."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("extract_throughput", REPO / "benchmarks" / "extract_throughput.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_random_encoder("resnet50_trunc")  # type: ignore[no-any-return]


def _tiles_h5(path: Path, slide: Path, *, level: int, read_px: int, tile_px: int) -> Path:
    info = _info(slide)
    d = int(round(info.level_downsamples[level]))
    coords = _coords(info, level, read_px)
    with h5py.File(path, "w") as h5:
        h5.create_dataset("coords", data=coords)
        h5.attrs.update({
            "slide_id": slide.stem, "read_level": level, "read_tile_px": read_px, "tile_px": tile_px,
            "read_downsample": float(d), "reader": "openslide",
        })  # fmt: skip
    return path


@needs_cuda
@pytest.mark.parametrize(("name", "level", "read_px", "tile_px"), [CASES[3]])
def test_gpu_decoded_features_match_cpu_decoded(
    tmp_path: Path, name: str, level: int, read_px: int, tile_px: int, svs: Path, pyramid: Path
) -> None:
    slide = _slide(name, svs, pyramid)
    tiles = _tiles_h5(tmp_path / "tiles.h5", slide, level=level, read_px=read_px, tile_px=tile_px)
    encoder = _resnet50_trunc()
    out = {}
    for decoder in ("tifffile", "gpu"):
        settings = ExtractSettings(batch_size=32, device="cuda", precision="fp32", region_px=1024, region_decoder=decoder)
        extract_slide_features(
            slide_path=slide, tiles_h5=tiles, out_h5=tmp_path / f"{decoder}.h5", encoder=encoder, settings=settings
        )
        out[decoder] = read_features(tmp_path / f"{decoder}.h5")
    assert out["gpu"][2]["region_decoder"] == "gpu" and out["tifffile"][2]["region_decoder"] == "tifffile"
    a, b = out["tifffile"][0].astype(np.float64), out["gpu"][0].astype(np.float64)
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    assert cosine.min() >= 0.9999, f"min per-tile cosine {cosine.min():.6f}"


@needs_cuda
def test_auto_keeps_the_cpu_decoder_on_the_gpu(tmp_path: Path, pyramid: Path) -> None:
    tiles = _tiles_h5(tmp_path / "tiles.h5", pyramid, level=1, read_px=128, tile_px=128)
    settings = ExtractSettings(batch_size=16, device="cuda", region_decoder="auto")
    extract_slide_features(
        slide_path=pyramid, tiles_h5=tiles, out_h5=tmp_path / "f.h5", encoder=_small_cnn(), settings=settings
    )
    assert read_features(tmp_path / "f.h5")[2]["region_decoder"] == "tifffile"


@needs_cuda
def test_gpu_refuses_rgb_coded_tiles_it_decodes_wrongly(tmp_path: Path, svs: Path) -> None:
    tiles = _tiles_h5(tmp_path / "tiles.h5", svs, level=0, read_px=256, tile_px=256)
    settings = ExtractSettings(batch_size=16, device="cuda", region_decoder="gpu")
    with pytest.raises(SlideError, match="RGB-coded JPEG tiles"):
        extract_slide_features(
            slide_path=svs, tiles_h5=tiles, out_h5=tmp_path / "f.h5", encoder=_small_cnn(), settings=settings
        )


@pytest.mark.skipif(CUDA, reason="checks a machine without a GPU")
def test_auto_on_the_cpu_keeps_the_cpu_decoder(tmp_path: Path, pyramid: Path) -> None:
    tiles = _tiles_h5(tmp_path / "tiles.h5", pyramid, level=1, read_px=128, tile_px=128)
    settings = ExtractSettings(batch_size=16, device="auto", region_decoder="auto")
    extract_slide_features(
        slide_path=pyramid, tiles_h5=tiles, out_h5=tmp_path / "f.h5", encoder=_small_cnn(), settings=settings
    )
    assert read_features(tmp_path / "f.h5")[2]["region_decoder"] == "tifffile"


@pytest.mark.skipif(CUDA, reason="checks a machine without a GPU")
def test_gpu_decoder_without_a_gpu_is_a_config_error(tmp_path: Path, pyramid: Path) -> None:
    tiles = _tiles_h5(tmp_path / "tiles.h5", pyramid, level=1, read_px=128, tile_px=128)
    settings = ExtractSettings(batch_size=16, device="auto", region_decoder="gpu")
    with pytest.raises(ConfigError, match="region_decoder is 'gpu' but the extraction runs on cpu") as err:
        extract_slide_features(
            slide_path=pyramid, tiles_h5=tiles, out_h5=tmp_path / "f.h5", encoder=_small_cnn(), settings=settings
        )
    assert "CUDA GPU" in str(err.value)
    assert not (tmp_path / "f.h5").exists()


def test_gpu_decoder_settings_refused_up_front() -> None:
    with pytest.raises(ConfigError, match="features.device is 'cpu'"):
        ExtractSettings(device="cpu", region_decoder="gpu")
    with pytest.raises(ConfigError, match="stain_norm"):
        check_region_decoder("gpu", device="auto", stain_norm="macenko")
    with pytest.raises(ConfigError, match="unknown region decoder"):
        ExtractSettings(region_decoder="nvjpeg")
    check_region_decoder("gpu", device="cuda", stain_norm=None)


def test_colour_check_tells_a_wrong_colour_space(svs: Path) -> None:
    """The check that guards GPU decoding of RGB-coded tiles: a stream read as YCbCr fails it."""
    from histofuse.features.device_regions import COLOUR_CHECK_MAX, decode_streams, decodes_like_cpu

    (tables, _), tiles = _stored_tiles(svs, 0)
    _, raw = tiles[len(tiles) // 2]
    right = complete_stream(raw, tables, rgb=True)
    wrong = decode_streams([complete_stream(raw, tables, rgb=False)], torch.device("cpu"))[0]
    assert decodes_like_cpu(right, torch.device("cpu"))
    reference = decode_streams([right], torch.device("cpu"))[0]
    assert int((reference.int() - wrong.int()).abs().max()) > COLOUR_CHECK_MAX
    with JpegTileReader(svs, _info(svs)) as reader:
        assert reader.rgb_coded(0) and reader.sample_stream(0)[:2] == b"\xff\xd8"

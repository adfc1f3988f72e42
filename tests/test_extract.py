"""Per-slide feature extraction from a small synthetic pyramidal slide."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import histofuse
from histofuse.errors import ConfigError, HistofuseError, SlideError
from histofuse.features.encoders import Encoder, build_encoder
from histofuse.features.extract import (
    ExtractSettings,
    check_features_encoder,
    extract_slide_features,
    read_features,
    resolve_precision,
)

MPP = 0.5
SIDE = 1024
TILE = 256
CPU = ExtractSettings(batch_size=4, device="cpu")
# (0, 0) and (512, 512) hold the same pixels; every other tile is different noise
COORDS = np.array(
    [[0, 0], [256, 0], [512, 0], [768, 0], [0, 256], [256, 256], [512, 512], [768, 512], [0, 768], [768, 768]],
    dtype=np.int64,
)
TWIN_A, TWIN_B = 0, 6


def _write_slide(path: Path, image: np.ndarray, *, levels: int = 3) -> None:
    """Lossless tiled pyramidal BigTIFF that OpenSlide opens as a generic-tiff slide."""
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        level_image = image
        for level in range(levels):
            if level:
                level_image = np.ascontiguousarray(level_image[::2, ::2])
            per_cm = 1e4 / (MPP * 2**level)
            tif.write(
                level_image,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="zlib",
                subfiletype=1 if level else 0,
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                metadata=None,
            )


def _write_tiles(
    path: Path,
    coords: np.ndarray,
    *,
    read_level: int = 0,
    read_tile_px: int = TILE,
    tile_px: int = TILE,
    drop: tuple[str, ...] = (),
) -> Path:
    downsample = 2.0**read_level
    attrs: dict[str, Any] = {
        "slide_id": "slide-1",
        "target_mpp": MPP * downsample * read_tile_px / tile_px,
        "level0_mpp": MPP,
        "read_level": read_level,
        "read_downsample": downsample,
        "tile_px": tile_px,
        "tile_px_level0": int(read_tile_px * downsample),
        "read_tile_px": read_tile_px,
        "reader": "openslide",
        "patch_size": tile_px,
        "patch_level": read_level,
    }
    with h5py.File(path, "w") as h5:
        h5.create_dataset("coords", data=coords.astype(np.int64).reshape(-1, 2))
        h5["coords"].attrs["patch_size"] = tile_px
        h5.create_dataset("tissue_fraction", data=np.linspace(0.5, 1.0, len(coords), dtype=np.float32))
        for key, value in attrs.items():
            if key not in drop:
                h5.attrs[key] = value
    return path


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8)
    # smooth blobs so tiles look different at the encoder's scale, not only as noise
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    pixels[..., 0] = ((np.sin(xx / 37.0) + np.cos(yy / 23.0) + 2) * 60).astype(np.uint8)
    pixels[512:768, 512:768] = pixels[0:256, 0:256]
    return pixels


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory, image: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("slide") / "slide-1.tiff"
    _write_slide(path, image)
    return path


@pytest.fixture(scope="module")
def lite0() -> Encoder:
    return build_encoder("efficientnet_lite0")


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory, slide: Path, lite0: Encoder) -> Path:
    folder = tmp_path_factory.mktemp("features")
    tiles = _write_tiles(folder / "tiles.h5", COORDS)
    out = folder / "slide-1.h5"
    assert extract_slide_features(slide_path=slide, tiles_h5=tiles, out_h5=out, encoder=lite0, settings=CPU) == 10
    return out


def test_features_shape_and_coords(extracted: Path) -> None:
    features, coords, _ = read_features(extracted)
    assert features.shape == (10, 1280)
    assert features.dtype == np.float32
    assert np.isfinite(features).all()
    np.testing.assert_array_equal(coords, COORDS)
    with h5py.File(extracted, "r") as h5:
        assert h5["coords"].dtype == np.int64
        assert h5["coords"].attrs["patch_size"] == TILE
        np.testing.assert_array_equal(h5["tissue_fraction"][()], np.linspace(0.5, 1.0, 10, dtype=np.float32))


def test_features_file_is_self_describing(extracted: Path, lite0: Encoder) -> None:
    _, _, attrs = read_features(extracted)
    assert attrs["encoder"] == "efficientnet_lite0"
    assert attrs["dim"] == 1280
    assert attrs["precision"] == "fp32"
    assert attrs["device"] == "cpu"
    assert attrs["weights_sha256"] == lite0.weights_sha256
    assert attrs["weights_path"] == lite0.weights_path
    assert attrs["histofuse_version"] == histofuse.__version__
    for key in ("slide_id", "target_mpp", "level0_mpp", "read_level", "tile_px", "read_tile_px", "patch_size"):
        assert key in attrs
    assert attrs["slide_id"] == "slide-1"
    assert attrs["tile_resize"] == "none"  # tiles read at their own size


def test_identical_tiles_give_identical_features(extracted: Path) -> None:
    features, _, _ = read_features(extracted)
    np.testing.assert_allclose(features[TWIN_A], features[TWIN_B], rtol=0, atol=1e-5)
    others = np.delete(features, [TWIN_A, TWIN_B], axis=0)
    distances = np.abs(others - features[TWIN_A]).max(axis=1)
    assert (distances > 1e-2).all()
    assert len({row.tobytes() for row in others}) == len(others)


def test_features_match_the_encoder_on_the_tile(extracted: Path, image: np.ndarray, lite0: Encoder) -> None:
    features, _, _ = read_features(extracted)
    x, y = COORDS[3]
    tile = torch.from_numpy(image[y : y + TILE, x : x + TILE]).permute(2, 0, 1).float().unsqueeze(0) / 255
    tile = F.interpolate(tile, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    tile = (tile - torch.tensor(lite0.mean).view(1, 3, 1, 1)) / torch.tensor(lite0.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = lite0.model(tile)[0].numpy()
    np.testing.assert_allclose(features[3], expected, rtol=1e-4, atol=1e-4)


def test_reads_a_lower_level_with_workers(tmp_path: Path, slide: Path, lite0: Encoder) -> None:
    tiles = _write_tiles(tmp_path / "tiles.h5", COORDS[:3], read_level=1, read_tile_px=128, tile_px=224)
    out = tmp_path / "features.h5"
    settings = ExtractSettings(batch_size=2, num_workers=2, device="cpu")
    n = extract_slide_features(slide_path=slide, tiles_h5=tiles, out_h5=out, encoder=lite0, settings=settings)
    features, _, attrs = read_features(out)
    assert n == 3
    assert features.shape == (3, 1280)
    assert (attrs["read_level"], attrs["tile_px"]) == (1, 224)
    assert attrs["tile_resize"] == "bilinear-antialias"  # 128-px reads resized to 224 px


@pytest.mark.parametrize(
    ("read_px", "side", "most", "share"),
    [(512, 256, 0, 0.0), (254, 256, 0, 0.0), (507, 256, 1, 0.01), (257, 256, 1, 0.01), (128, 224, 2, 0.1)],
)
def test_tile_resize_gives_pillows_pixels(read_px: int, side: int, most: int, share: float) -> None:
    """Grey levels apart from Pillow's BILINEAR: none at 2× and near 1×, at most 1 when shrinking, 2 when enlarging."""
    from PIL import Image

    from histofuse.features.tile_loader import _resize

    rng = np.random.default_rng(read_px)
    tile = (rng.random((read_px, read_px, 3)) * 255).astype(np.uint8)
    pillow = np.asarray(Image.fromarray(tile).resize((side, side), Image.Resampling.BILINEAR)).astype(int)
    ours = _resize(tile, side)
    assert ours.shape == (side, side, 3) and ours.dtype == np.uint8
    difference = np.abs(ours.astype(int) - pillow)
    assert difference.max() <= most and (difference > 0).mean() <= share


def test_no_tiles_gives_an_empty_features_file(tmp_path: Path, slide: Path, lite0: Encoder) -> None:
    tiles = _write_tiles(tmp_path / "tiles.h5", np.zeros((0, 2), dtype=np.int64))
    out = tmp_path / "features.h5"
    assert extract_slide_features(slide_path=slide, tiles_h5=tiles, out_h5=out, encoder=lite0, settings=CPU) == 0
    features, coords, attrs = read_features(out)
    assert features.shape == (0, 1280)
    assert coords.shape == (0, 2)
    assert attrs["encoder"] == "efficientnet_lite0"


def test_missing_slide_leaves_no_output(tmp_path: Path, lite0: Encoder) -> None:
    tiles = _write_tiles(tmp_path / "tiles.h5", COORDS)
    out = tmp_path / "features.h5"
    with pytest.raises(SlideError, match="does not exist"):
        extract_slide_features(
            slide_path=tmp_path / "absent.svs", tiles_h5=tiles, out_h5=out, encoder=lite0, settings=CPU
        )
    assert not out.exists()


class _FailingModel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("encoder crashed")


def test_failure_during_encoding_leaves_no_output(tmp_path: Path, slide: Path, lite0: Encoder) -> None:
    tiles = _write_tiles(tmp_path / "tiles.h5", COORDS)
    out = tmp_path / "out" / "features.h5"
    broken = dataclasses.replace(lite0, model=_FailingModel())
    with pytest.raises(RuntimeError, match="encoder crashed"):
        extract_slide_features(slide_path=slide, tiles_h5=tiles, out_h5=out, encoder=broken, settings=CPU)
    assert list(out.parent.iterdir()) == []


def test_level_beyond_the_pyramid_is_a_slide_error(tmp_path: Path, slide: Path, lite0: Encoder) -> None:
    tiles = _write_tiles(tmp_path / "tiles.h5", COORDS, read_level=5)
    with pytest.raises(SlideError, match="level 5"):
        extract_slide_features(slide_path=slide, tiles_h5=tiles, out_h5=tmp_path / "f.h5", encoder=lite0, settings=CPU)


def test_tiles_file_without_geometry(tmp_path: Path, slide: Path, lite0: Encoder) -> None:
    tiles = _write_tiles(tmp_path / "tiles.h5", COORDS, drop=("read_tile_px",))
    with pytest.raises(HistofuseError, match="read_tile_px") as info:
        extract_slide_features(slide_path=slide, tiles_h5=tiles, out_h5=tmp_path / "f.h5", encoder=lite0, settings=CPU)
    assert str(tiles) in str(info.value)


def test_check_features_encoder(extracted: Path, lite0: Encoder) -> None:
    check_features_encoder(extracted, "efficientnet_lite0")
    check_features_encoder(extracted, "efficientnet_lite0", expected_sha256=lite0.weights_sha256)
    with pytest.raises(HistofuseError, match="'efficientnet_lite0', but 'resnet50_trunc'") as info:
        check_features_encoder(extracted, "resnet50_trunc")
    assert str(extracted) in str(info.value)
    assert "rerun feature extraction" in str(info.value)
    with pytest.raises(HistofuseError, match="other weights"):
        check_features_encoder(extracted, "efficientnet_lite0", expected_sha256="0" * 64)


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="precision"):
        ExtractSettings(precision="int8")
    with pytest.raises(ConfigError, match="device"):
        ExtractSettings(device="tpu")
    with pytest.raises(ConfigError, match="batch_size"):
        ExtractSettings(batch_size=0)
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_config_error(tmp_path: Path, slide: Path, lite0: Encoder) -> None:
    tiles = _write_tiles(tmp_path / "tiles.h5", COORDS)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        extract_slide_features(
            slide_path=slide,
            tiles_h5=tiles,
            out_h5=tmp_path / "f.h5",
            encoder=lite0,
            settings=ExtractSettings(device="cuda"),
        )


def test_bf16_on_cpu_is_close_to_fp32(tmp_path: Path, slide: Path, lite0: Encoder, extracted: Path) -> None:
    tiles = _write_tiles(tmp_path / "tiles.h5", COORDS[:2])
    out = tmp_path / "features.h5"
    settings = dataclasses.replace(CPU, precision="bf16")
    extract_slide_features(slide_path=slide, tiles_h5=tiles, out_h5=out, encoder=lite0, settings=settings)
    low, _, attrs = read_features(out)
    full, _, _ = read_features(extracted)
    assert attrs["precision"] == "bf16"
    assert low.dtype == np.float32
    cosine = (low * full[:2]).sum(1) / np.linalg.norm(low, axis=1) / np.linalg.norm(full[:2], axis=1)
    assert (cosine > 0.95).all()


# ------------------------------------------------------------------------------ region reads


from torch.utils.data import DataLoader  # noqa: E402

from histofuse.features.regions import plan_reads  # noqa: E402
from histofuse.features.stain import MacenkoNormaliser, fit_stains, load_normaliser  # noqa: E402
from histofuse.features.tile_loader import RegionTileDataset, TileLoader, _as_is, rebatch  # noqa: E402
from histofuse.features.tile_slots import TileSlots, received_chunks, slots_for  # noqa: E402
from histofuse.slides.pyramid import write_pyramidal_tiff  # noqa: E402

GRID = np.array([[x, y] for y in range(0, SIDE - TILE + 1, 128) for x in range(0, SIDE - TILE + 1, 128)])
"""Every 256-px tile at a 128-px stride: overlapping neighbours, 49 in all."""


@pytest.fixture(scope="module")
def jpeg_slide(tmp_path_factory: pytest.TempPathFactory, image: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("jpeg") / "slide-1.tiff"
    write_pyramidal_tiff(path, image, mpp=MPP, levels=3)
    return path


def _tiles_by_index(dataset: RegionTileDataset) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    for i in range(len(dataset)):
        indices, tiles = dataset[i]
        out.update({int(k): tile.numpy() for k, tile in zip(indices, tiles, strict=True)})
    dataset.close()
    return out


@pytest.mark.parametrize("which", ["zlib", "jpeg"])
@pytest.mark.parametrize(("level", "read_px"), [(0, 256), (1, 128)])
def test_region_reads_give_the_pixels_of_single_tile_reads(
    request: pytest.FixtureRequest, which: str, level: int, read_px: int
) -> None:
    path = request.getfixturevalue("slide" if which == "zlib" else "jpeg_slide")
    downsample = 2.0**level

    def dataset(region_px: int) -> RegionTileDataset:
        jobs = plan_reads(GRID, downsample=downsample, read_tile_px=read_px, region_px=region_px)
        return RegionTileDataset(
            slide_path=path, jobs=jobs, read_level=level, read_tile_px=read_px, tile_px=224, reader="openslide", mpp=None
        )

    shared, single = dataset(512), dataset(0)
    assert len(shared) < len(GRID) // 4  # neighbours really share reads
    assert len(single) == len(GRID)
    a, b = _tiles_by_index(shared), _tiles_by_index(single)
    assert sorted(a) == sorted(b) == list(range(len(GRID)))
    for index in a:
        np.testing.assert_array_equal(a[index], b[index])


def test_features_equal_the_per_tile_path(tmp_path: Path, jpeg_slide: Path, lite0: Encoder) -> None:
    corner = GRID[(GRID <= 256).all(axis=1)]  # 3 × 3 overlapping tiles: one shared region read
    assert len(plan_reads(corner, downsample=1.0, read_tile_px=TILE, region_px=512)) == 1
    tiles = _write_tiles(tmp_path / "tiles.h5", corner)
    outputs = {}
    for name, settings in {
        "per_tile": ExtractSettings(batch_size=4, device="cpu", region_px=0, region_decoder="reader"),
        "regions": ExtractSettings(batch_size=4, device="cpu", region_px=2048, region_decoder="tifffile"),
        "regions_workers": ExtractSettings(batch_size=5, device="cpu", region_px=512, num_workers=2),
    }.items():
        out = tmp_path / f"{name}.h5"
        n = extract_slide_features(slide_path=jpeg_slide, tiles_h5=tiles, out_h5=out, encoder=lite0, settings=settings)
        assert n == len(corner) == 9
        outputs[name] = read_features(out)
    reference, coords, _ = outputs["per_tile"]
    for name in ("regions", "regions_workers"):
        features, other_coords, attrs = outputs[name]
        np.testing.assert_array_equal(other_coords, coords)
        np.testing.assert_allclose(features, reference, rtol=1e-5, atol=1e-5)
        assert attrs["source"] == "extracted" and attrs["stain_norm"] == "none"
        assert attrs["region_decoder"] == "tifffile"
    assert outputs["per_tile"][2]["region_decoder"] == "openslide"


def test_plan_reads_covers_every_tile_once() -> None:
    coords = np.concatenate([GRID, [[4000, 4000], [9000, 100]]])  # two isolated tiles far away
    jobs = plan_reads(coords, downsample=1.0, read_tile_px=256, region_px=1024)
    seen = np.concatenate([job.indices for job in jobs])
    assert sorted(seen.tolist()) == list(range(len(coords)))
    for job in jobs:
        assert max(job.size) <= 1024 + 256
        for index, (ox, oy) in zip(job.indices, job.offsets, strict=True):
            assert (job.location[0] + ox, job.location[1] + oy) == tuple(coords[index])
    singles = [job for job in jobs if len(job.indices) == 1]
    assert {int(job.indices[0]) for job in singles} >= {len(GRID), len(GRID) + 1}
    # off the read level's pixel grid, or a non-integral downsample: every tile is read alone
    assert len(plan_reads(GRID + 1, downsample=2.0, read_tile_px=128, region_px=1024)) == len(GRID)
    assert len(plan_reads(GRID, downsample=2.0003, read_tile_px=128, region_px=1024)) == len(GRID)
    # two tiles in opposite corners of a cell would waste most of the region: read alone
    assert len(plan_reads(np.array([[0, 0], [1792, 1792]]), downsample=1.0, read_tile_px=256, region_px=2048)) == 2
    assert plan_reads(np.zeros((0, 2)), downsample=1.0, read_tile_px=256, region_px=2048) == []


def test_rebatch_makes_exact_batches_in_order() -> None:
    sizes = [3, 1, 5, 2]
    start = np.cumsum([0, *sizes])
    chunks = [
        (torch.arange(a, b), torch.full((b - a, 2, 2, 3), a, dtype=torch.uint8).add_(torch.arange(b - a).view(-1, 1, 1, 1)))
        for a, b in zip(start[:-1], start[1:], strict=True)
    ]
    batches = list(rebatch(chunks, 4, pin=False))
    assert [len(indices) for indices, _ in batches] == [4, 4, 3]
    indices = np.concatenate([indices for indices, _ in batches])
    np.testing.assert_array_equal(indices, np.arange(11))
    values = torch.cat([tiles for _, tiles in batches])[:, 0, 0, 0].numpy()
    np.testing.assert_array_equal(values, np.arange(11))


def test_rebatch_reuses_one_buffer_only_when_asked() -> None:
    chunks = [(np.arange(k, k + 2), torch.full((2, 2, 2, 3), k, dtype=torch.uint8)) for k in range(0, 8, 2)]
    fresh = [batch for _, batch in rebatch(chunks, 4, pin=False)]
    assert fresh[0].data_ptr() != fresh[1].data_ptr()
    assert fresh[0][:, 0, 0, 0].tolist() == [0, 0, 2, 2]  # kept batches keep their tiles
    seen = []
    for indices, batch in rebatch(chunks, 4, pin=False, reuse=True):
        assert batch[:, 0, 0, 0].tolist() == [int(i) - int(i) % 2 for i in indices]  # right while in use
        seen.append(batch.data_ptr())
    assert len(seen) == 2 and seen[0] == seen[1]


def _slot_dataset(path: Path, slots: TileSlots | None, *, region_px: int = 0) -> RegionTileDataset:
    jobs = plan_reads(GRID, downsample=1.0, read_tile_px=TILE, region_px=region_px)
    return RegionTileDataset(
        slide_path=path, jobs=jobs, read_level=0, read_tile_px=TILE, tile_px=TILE, reader="openslide", mpp=None, slots=slots
    )


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])  # forkserver: Python 3.14's default
def test_workers_hand_tiles_over_in_shared_slots(jpeg_slide: Path, start_method: str) -> None:
    """49 single-tile reads through 2 workers and 6 slots: slots are reused many times, tiles stay right."""
    import multiprocessing

    context = multiprocessing.get_context(start_method)
    reference = _tiles_by_index(_slot_dataset(jpeg_slide, None))
    slots = TileSlots(slots=slots_for(2, 2), capacity=1, tile_px=TILE, context=context)
    dataset = _slot_dataset(jpeg_slide, slots)
    loader = DataLoader(
        dataset, batch_size=None, num_workers=2, prefetch_factor=2, collate_fn=_as_is, multiprocessing_context=context
    )
    carried: list[object] = []

    def items(loader: DataLoader = loader) -> Any:
        for indices, slot in loader:
            carried.append(slot)
            yield indices, slot

    got: dict[int, np.ndarray] = {}
    for indices, tiles in received_chunks(items(), slots):
        got.update({int(k): tile.numpy().copy() for k, tile in zip(indices, tiles, strict=True)})
    del loader
    assert len(carried) == len(GRID)
    assert all(isinstance(slot, int) and 0 <= slot < slots.slots for slot in carried)  # no pixels in the queue
    assert sorted(got) == list(range(len(GRID)))
    for index, tile in got.items():
        np.testing.assert_array_equal(tile, reference[index])
    assert sorted(slots.acquire() for _ in range(slots.slots)) == list(range(slots.slots))  # every slot came back
    slots.close()


def test_tile_loader_passes_repeat_and_it_closes(jpeg_slide: Path) -> None:
    reference = _tiles_by_index(_slot_dataset(jpeg_slide, None, region_px=512))
    with TileLoader(_slot_dataset(jpeg_slide, None, region_px=512), num_workers=2) as loader:
        assert loader.slots is not None and loader.slots.capacity > 1  # region reads share a slot
        for _ in range(2):  # persistent workers serve a second pass
            seen = 0
            for indices, tiles in loader:
                for k, tile in zip(indices, tiles, strict=True):
                    np.testing.assert_array_equal(tile.numpy(), reference[int(k)])
                    seen += 1
            assert seen == len(GRID)
    with pytest.raises(RuntimeError, match="closed"):
        iter(loader)
    with TileLoader(_slot_dataset(jpeg_slide, None), num_workers=0) as in_process:
        assert in_process.slots is None and sum(len(i) for i, _ in in_process) == len(GRID)


def test_a_failed_read_gives_its_slot_back(jpeg_slide: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import histofuse.features.tile_loader as tile_loader

    slots = TileSlots(slots=1, capacity=1, tile_px=TILE, wait_s=0.2)
    dataset = _slot_dataset(jpeg_slide, slots)
    monkeypatch.setattr(tile_loader, "get_worker_info", lambda: object())  # as inside a DataLoader worker

    def broken(*_: Any) -> None:
        raise SlideError("corrupt tile", path=jpeg_slide)

    monkeypatch.setattr(dataset, "_cut", broken)
    with pytest.raises(SlideError, match="corrupt tile"):
        dataset[0]
    monkeypatch.undo()
    monkeypatch.setattr(tile_loader, "get_worker_info", lambda: object())
    indices, slot = dataset[1]  # the only slot is free again
    assert slot == 0 and indices.tolist() == [1]
    with pytest.raises(RuntimeError, match="no tile slot came free"):
        dataset[2]  # nobody gave slot 0 back
    dataset.close()
    slots.close()


def test_too_little_shared_memory_is_a_config_error(tmp_path: Path) -> None:
    from histofuse.features.tile_slots import _check_shared_memory

    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    _check_shared_memory(1024, tmp_path)
    with pytest.raises(ConfigError, match="features.num_workers") as err:
        _check_shared_memory(free + 2**30, tmp_path)
    assert str(tmp_path) in str(err.value) and "shm-size" in str(err.value)


def test_received_chunks_gives_the_slot_back_when_the_consumer_stops() -> None:
    slots = TileSlots(slots=2, capacity=3, tile_px=2, wait_s=0.2)
    first, second = slots.acquire(), slots.acquire()
    slots.view(first, 2).fill_(7)
    chunks = received_chunks([(np.array([0, 1]), first), (np.array([2]), second)], slots)
    indices, tiles = next(chunks)
    assert indices.tolist() == [0, 1] and tiles.shape == (2, 2, 2, 3) and int(tiles.max()) == 7
    chunks.close()  # e.g. the encoder failed: the slot in use goes back
    assert slots.acquire() == first
    with pytest.raises(ValueError, match="do not fit"):
        slots.view(first, 4)
    slots.close()


def test_progress_bar_on_stderr(tmp_path: Path, slide: Path, lite0: Encoder, capsys: pytest.CaptureFixture[str]) -> None:
    tiles = _write_tiles(tmp_path / "tiles.h5", COORDS[:3])
    extract_slide_features(slide_path=slide, tiles_h5=tiles, out_h5=tmp_path / "f.h5", encoder=lite0, settings=CPU)
    err = capsys.readouterr().err
    assert "slide-1" in err and "3/3" in err


def test_new_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="region_px"):
        ExtractSettings(region_px=-1)
    with pytest.raises(ConfigError, match="reinhard"):
        ExtractSettings(stain_norm="reinhard")
    with pytest.raises(ConfigError, match="features.stain_target"):
        ExtractSettings(stain_norm="macenko")
    with pytest.raises(ConfigError, match="does not exist"):
        load_normaliser("macenko", tmp_path / "absent.png")
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 250, dtype=np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(ConfigError, match="too little H&E stain"):
        load_normaliser("macenko", tmp_path / "blank.png")
    assert load_normaliser(None, None) is None


# --------------------------------------------------------------------------- stain normalisation

# Two hand-made pairs of haematoxylin and eosin optical-density vectors (columns), both H&E-like:
# every channel absorbs enough for the pixels to pass Macenko's background threshold
HAND_MADE = np.array([[0.60, 0.25], [0.75, 0.85], [0.28, 0.45]])
OTHER = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])


def _stained(stains: np.ndarray, seed: int, side: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image made by Beer–Lambert from ``stains`` (3 × 2) and its concentrations (2 × N)."""
    stains = stains / np.linalg.norm(stains, axis=0, keepdims=True)
    rng = np.random.default_rng(seed)
    n = side * side
    kind = rng.integers(0, 3, size=n)  # mostly haematoxylin, mostly eosin, or both
    conc = np.stack([rng.uniform(0.3, 1.5, n) * (kind != 1), rng.uniform(0.3, 1.5, n) * (kind != 0)])
    od = stains @ conc
    rgb = np.clip(np.rint(255.0 * np.exp(-od) - 1.0), 0, 255).astype(np.uint8)
    return rgb.T.reshape(side, side, 3), conc


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=0)
    b = b / np.linalg.norm(b, axis=0)
    return (a * b).sum(axis=0)


def test_macenko_recovers_a_hand_made_stain_matrix() -> None:
    for stains, seed in ((HAND_MADE, 1), (OTHER, 2)):
        image, _ = _stained(stains, seed)
        fit = fit_stains(image)
        assert fit is not None
        assert (_cosines(fit.stain_matrix, stains) > 0.99).all()  # haematoxylin first, then eosin
        np.testing.assert_allclose(np.linalg.norm(fit.stain_matrix, axis=0), 1.0)


def test_macenko_moves_an_image_to_the_target_stains() -> None:
    source, conc = _stained(HAND_MADE, 3)
    target, _ = _stained(OTHER, 4)
    normalised = MacenkoNormaliser.from_image(target)(source)
    assert normalised.shape == source.shape and normalised.dtype == np.uint8
    # the source's own concentrations drawn in the target's stains
    stains = OTHER / np.linalg.norm(OTHER, axis=0, keepdims=True)
    expected = np.clip(255.0 * np.exp(-(stains @ conc)) - 1.0, 0, 255).T.reshape(source.shape)
    after = np.abs(normalised.astype(float) - expected).mean()
    before = np.abs(source.astype(float) - expected).mean()
    assert after < 1.5 and after < before / 5
    refit = fit_stains(normalised)
    assert refit is not None and (_cosines(refit.stain_matrix, OTHER) > 0.99).all()


def test_macenko_leaves_background_tiles_alone() -> None:
    blank = np.full((32, 32, 3), 245, dtype=np.uint8)
    target, _ = _stained(OTHER, 5)
    assert (MacenkoNormaliser.from_image(target)(blank) == blank).all()


def test_extraction_with_stain_normalisation(tmp_path: Path, slide: Path, lite0: Encoder, extracted: Path) -> None:
    from PIL import Image

    target, _ = _stained(OTHER, 6)
    Image.fromarray(target).save(tmp_path / "target.png")
    tiles = _write_tiles(tmp_path / "tiles.h5", COORDS[:2])
    settings = dataclasses.replace(CPU, stain_norm="macenko", stain_target=str(tmp_path / "target.png"))
    out = tmp_path / "features.h5"
    extract_slide_features(slide_path=slide, tiles_h5=tiles, out_h5=out, encoder=lite0, settings=settings)
    features, _, attrs = read_features(out)
    plain, _, _ = read_features(extracted)
    assert attrs["stain_norm"] == "macenko" and attrs["stain_target"] == str(tmp_path / "target.png")
    assert np.isfinite(features).all()
    assert np.abs(features - plain[:2]).max() > 1e-2

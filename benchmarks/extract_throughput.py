"""Feature-extraction throughput: the encoder alone, a naive per-tile loader, and histofuse end to end.

A synthetic H&E-like slide is written as a JPEG-compressed pyramidal BigTIFF (24,576 px a side at
0.5 µm/px by default; ``--quick``: 2,048 px; ``--slide-mpp 0.25``: a 40× slide, whose tiles are
read at 512 px from level 0 and resized, as on Aperio 40× scans with levels 4× apart), masked and
tiled by histofuse (256-px tiles at 0.5 µm/px). Then, for each encoder (random weights, nothing
downloaded) and in the same run:

(a) ``encoder_only``: the encoder on synthetic normalised tensors already on the device;
(b) ``naive_loader``: a per-tile OpenSlide ``DataLoader`` (read, resize and normalise each tile on
    the CPU, as CLAM-style scripts do), then the encoder;
(c) ``histofuse``: :func:`histofuse.features.extract.extract_slide_features`, file written
    (``--region-decoder``, default ``auto``: the JPEG tiles decoded by tifffile);
(e) ``histofuse_no_encoder``: (c) with an encoder that does no work (a zero vector per tile), so
    the figure is what reading, transfer, preprocessing and writing alone sustain;
(d) with ``--compare-decoders``, ``histofuse_reader_decode``: the same with every read decoded by
    the slide reader (OpenSlide), to show what the decoding path is worth.

Each figure is one JSON line on stdout (tiles/s, device, precision, batch size, workers, git
revision, versions), followed by the ratios (c)/(a) and (c)/(b). Progress and logs go to stderr.

    python benchmarks/extract_throughput.py --device cuda --workers 15          # a GPU node
    python benchmarks/extract_throughput.py --quick --device cpu --encoders resnet50_trunc
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import histofuse
from histofuse.features.encoders import IMAGENET_MEAN, IMAGENET_STD, Encoder, ResNet50Trunk
from histofuse.features.extract import (
    ExtractSettings,
    RegionTileDataset,
    extract_slide_features,
    read_tile_spec,
    resolve_device,
    resolve_precision,
    slide_tile_dataset,
)
from histofuse.slides.mask import MaskSettings, compute_tissue_mask
from histofuse.slides.reader import open_slide
from histofuse.slides.tiling import TilingSettings, compute_tile_grid, write_tiles_h5

log = logging.getLogger("extract_throughput")

BENCHMARK = "extract_throughput"
ENCODER_NAMES = ("resnet50_trunc", "vit_large_patch16_224")
DECODERS = ("auto", "reader", "tifffile", "gpu")
MPP = 0.5
"""Resolution the tiles are cut at (µm/px); the slide's own is ``--slide-mpp`` (default the same)."""
STORED_TILE = 256
INPUT_PX = 224
BANK = 32


# ------------------------------------------------------------------------------------ the slide


def _texture_bank(rng: np.random.Generator) -> list[np.ndarray]:
    """H&E-like 256-px tiles: pink stroma with a smooth texture and purple nuclei."""
    from scipy.ndimage import gaussian_filter

    yy, xx = np.mgrid[0:STORED_TILE, 0:STORED_TILE]
    bank = []
    for _ in range(BANK):
        field = gaussian_filter(rng.random((STORED_TILE, STORED_TILE)), 6)
        field = (field - field.min()) / (np.ptp(field) + 1e-9)
        tile = np.empty((STORED_TILE, STORED_TILE, 3), dtype=np.float32)
        tile[..., 0] = 225 + 20 * field
        tile[..., 1] = 140 + 60 * field
        tile[..., 2] = 190 + 30 * field
        for _ in range(int(rng.integers(20, 60))):
            cy, cx = rng.integers(0, STORED_TILE, 2)
            radius = rng.uniform(3, 8)
            nucleus = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
            tile[nucleus] = (85, 55, 140) + rng.normal(0, 8, 3)
        bank.append(np.clip(tile, 0, 255).astype(np.uint8))
    return bank


def write_synthetic_slide(path: Path, side: int, *, seed: int = 0, mpp: float = MPP, step: int = 2) -> None:
    """A ``side`` × ``side`` px JPEG pyramidal BigTIFF at ``mpp`` µm/px: tissue in an ellipse, glass around it.

    Each level is ``step`` times smaller than the one above (4 as in Aperio's 40× scans).
    """
    import tifffile

    rng = np.random.default_rng(seed)
    bank = _texture_bank(rng)
    glass = np.full((STORED_TILE, STORED_TILE, 3), 244, dtype=np.uint8)
    levels = 1
    while levels < 3 or side // step**levels >= 1024:
        levels += 1

    offsets = np.arange(STORED_TILE, dtype=np.float64) + 0.5

    def tiles(level: int, size: int) -> Iterator[np.ndarray]:
        """Row-major tiles of one level: the bank's textures inside an ellipse, glass outside."""
        count = math.ceil(size / STORED_TILE)
        for row in range(count):
            ys = ((row * STORED_TILE + offsets) / size * 2 - 1)[:, None]
            for col in range(count):
                xs = ((col * STORED_TILE + offsets) / size * 2 - 1)[None, :]
                inside = xs**2 / 0.8 + ys**2 / 0.6 <= 1.0
                texture = bank[(row * 7919 + col * 104729 + level) % BANK]
                if inside.all():
                    yield texture
                elif not inside.any():
                    yield glass
                else:
                    yield np.where(inside[..., None], texture, glass)

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in range(levels):
            size = side // step**level
            per_cm = 1e4 / (mpp * step**level)
            tif.write(
                tiles(level, size),
                shape=(size, size, 3),
                dtype=np.uint8,
                tile=(STORED_TILE, STORED_TILE),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 85},
                subfiletype=1 if level else 0,
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
    log.info("wrote %s: %d px a side, %d levels", path, side, levels)


def tile_slide(slide: Path, tiles_h5: Path, *, max_tiles: int | None) -> int:
    """histofuse's mask and tile grid for the slide; returns the number of tiles written."""
    with open_slide(slide) as reader:
        thumbnail, mask_mpp = reader.thumbnail_at_mpp(8.0)
        info = reader.info
    mask = compute_tissue_mask(thumbnail, mpp=mask_mpp, settings=MaskSettings())
    grid = compute_tile_grid(info, mask, TilingSettings(mpp=MPP, tile_px=STORED_TILE, max_tiles=max_tiles))
    write_tiles_h5(grid, tiles_h5, slide_id=slide.stem, reader="openslide")
    return int(len(grid.coords))


def prepare_slide(
    workdir: Path, side: int, *, max_tiles: int | None, slide_mpp: float = MPP
) -> tuple[Path, Path, int]:
    """The synthetic slide of ``side`` px at ``slide_mpp`` µm/px in ``workdir`` (reused when there)
    and its tiles file (tiles at :data:`MPP`); the tile count."""
    workdir.mkdir(parents=True, exist_ok=True)
    suffix = "" if slide_mpp == MPP else f"_{slide_mpp:g}mpp"
    slide = workdir / f"synthetic_{side}{suffix}.tiff"
    if not slide.exists():
        # a slide finer than the tiles is a 40×-style scan: levels 4× apart, tiles read at level 0 and resized
        write_synthetic_slide(slide, side, mpp=slide_mpp, step=2 if slide_mpp == MPP else 4)
    tiles_h5 = workdir / f"tiles_{side}{suffix}_{max_tiles or 'all'}.h5"
    n_tiles = tile_slide(slide, tiles_h5, max_tiles=max_tiles)
    if n_tiles == 0:
        raise SystemExit(f"no tissue tiles found on {slide}: the synthetic slide or the mask is broken")
    return slide, tiles_h5, n_tiles


def slide_dataset(slide: Path, tiles_h5: Path, *, region_px: int = 2048) -> RegionTileDataset:
    """histofuse's reads of the slide's tiles, as extraction plans them (shared regions, tifffile
    decoding where it applies)."""
    with open_slide(slide) as reader:
        info = reader.info
    settings = ExtractSettings(region_px=region_px)
    dataset, _ = slide_tile_dataset(slide, read_tile_spec(tiles_h5), info, settings, mpp=None)
    return dataset


# --------------------------------------------------------------------------------- the encoders


class _NoWork(torch.nn.Module):
    """Zero features of the right shape: the pipeline around the encoder, without the encoder."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros((x.shape[0], self.dim))


def build_random_encoder(name: str) -> Encoder:
    """``name`` with seeded random weights, built without any download."""
    torch.manual_seed(0)
    if name == "resnet50_trunc":
        model: torch.nn.Module = ResNet50Trunk()
        dim = 1024
    elif name == "vit_large_patch16_224":
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=0)
        dim = int(model.num_features)
    else:
        raise SystemExit(f"unknown encoder '{name}'; choose from {', '.join(ENCODER_NAMES)}")
    model.eval().requires_grad_(False)
    return Encoder(
        name=name,
        model=model,
        input_px=INPUT_PX,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dim=dim,
        weights_sha256="random-init-seed-0",
        weights_path="",
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str) -> Any:
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision in dtypes:
        return torch.autocast(device_type=device.type, dtype=dtypes[precision])
    return torch.autocast(device_type=device.type, enabled=False)


def encoder_only(encoder: Encoder, *, device: torch.device, precision: str, batch_size: int, tiles: int) -> float:
    """(a) tiles/s of the encoder on normalised tensors already on the device (after 2 warm-up batches)."""
    model = encoder.model.to(device=device, memory_format=torch.channels_last)
    x = torch.randn(batch_size, 3, INPUT_PX, INPUT_PX, device=device).contiguous(memory_format=torch.channels_last)
    batches = max(1, math.ceil(tiles / batch_size))
    with torch.inference_mode(), _autocast(device, precision):
        for _ in range(2):
            model(x)
        _sync(device)
        start = time.perf_counter()
        for _ in range(batches):
            model(x)
        _sync(device)
    return batches * batch_size / (time.perf_counter() - start)


class NaiveTiles(Dataset[torch.Tensor]):
    """The baseline loader: one OpenSlide read per tile, resized and normalised on the CPU."""

    def __init__(self, slide: Path, coords: np.ndarray, read_px: int = STORED_TILE) -> None:
        self.slide = slide
        self.coords = coords
        self.read_px = read_px
        self.mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
        self.std = np.asarray(IMAGENET_STD, dtype=np.float32)
        self._handle: Any = None

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, index: int) -> torch.Tensor:
        import openslide
        from PIL import Image

        if self._handle is None:
            self._handle = openslide.OpenSlide(str(self.slide))
        x, y = (int(v) for v in self.coords[index])
        tile = self._handle.read_region((x, y), 0, (self.read_px, self.read_px)).convert("RGB")
        tile = tile.resize((INPUT_PX, INPUT_PX), Image.Resampling.BILINEAR)
        array = (np.asarray(tile, dtype=np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(array.transpose(2, 0, 1).copy())


def naive_loader(
    encoder: Encoder,
    slide: Path,
    coords: np.ndarray,
    *,
    device: torch.device,
    precision: str,
    batch_size: int,
    workers: int,
    read_px: int = STORED_TILE,
) -> float:
    """(b) tiles/s of the naive per-tile DataLoader feeding the encoder, features back on the host."""
    model = encoder.model.to(device=device, memory_format=torch.channels_last)
    loader = DataLoader(
        NaiveTiles(slide, coords, read_px), batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda"
    )
    start = time.perf_counter()
    done = 0
    with torch.inference_mode(), _autocast(device, precision):
        for batch in loader:
            features = model(batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last))
            done += int(features.float().cpu().shape[0])
    elapsed = time.perf_counter() - start
    del loader
    return done / elapsed


def histofuse_end_to_end(
    encoder: Encoder, slide: Path, tiles_h5: Path, out_h5: Path, *, settings: ExtractSettings
) -> tuple[float, str]:
    """(c) tiles/s of ``extract_slide_features`` (file written) and the sha256 of its features."""
    start = time.perf_counter()
    n = extract_slide_features(slide_path=slide, tiles_h5=tiles_h5, out_h5=out_h5, encoder=encoder, settings=settings)
    elapsed = time.perf_counter() - start
    with h5py.File(out_h5, "r") as h5:
        digest = hashlib.sha256(np.ascontiguousarray(h5["features"][()]).tobytes()).hexdigest()
    return n / elapsed, digest


def _features_of(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as h5:
        return np.asarray(h5["features"][()], dtype=np.float64)


def _decoder_of(path: Path) -> str:
    with h5py.File(path, "r") as h5:
        value = h5.attrs.get("region_decoder", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest per-tile cosine similarity of two (N, dim) feature arrays (1.0 for none)."""
    if len(a) == 0:
        return 1.0
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return float(((a * b).sum(axis=1) / norms).min())


# ---------------------------------------------------------------------------------- the report


def git_revision() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files have changes; ``unknown`` outside git."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    import openslide
    import timm

    return {
        "python": platform.python_version(),
        "histofuse": histofuse.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "openslide": openslide.__library_version__,
        "openslide_python": openslide.__version__,
        "numpy": np.__version__,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def repeat(times: int, func: Callable[[], float]) -> tuple[float, list[float]]:
    """Median and every value of ``times`` runs of ``func``."""
    values = [func() for _ in range(times)]
    return statistics.median(values), values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 2,048-px slide, 32 tiles, batch 16: a smoke run")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--precision", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16")
    parser.add_argument("--encoders", nargs="+", default=list(ENCODER_NAMES), choices=ENCODER_NAMES)
    parser.add_argument("--side", type=int, default=None, help="slide side in px (default 24576; quick 2048)")
    parser.add_argument("--max-tiles", type=int, default=None, help="cap on tiles (default all; quick 32)")
    parser.add_argument(
        "--slide-mpp", type=float, default=MPP, help="the slide's resolution (0.25: a 40× slide, tiles read at 512 px)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default 128 (quick 16)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default cores - 1; quick 0)")
    parser.add_argument("--region-px", type=int, default=2048, help="histofuse's shared region reads")
    parser.add_argument("--region-decoder", default="auto", choices=DECODERS)
    parser.add_argument(
        "--other-decoders",
        nargs="*",
        default=[],
        choices=DECODERS,
        help="also time (c) with each of these region decoders (e.g. gpu tifffile), with the features' "
        "minimum per-tile cosine similarity to (c)'s",
    )
    parser.add_argument("--compare-decoders", action="store_true", help="also time (d), reads decoded by OpenSlide")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each figure (the median is reported)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the slide and outputs here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")

    side = args.side or (2048 if args.quick else 24576)
    max_tiles = args.max_tiles if args.max_tiles is not None else (32 if args.quick else None)
    batch_size = args.batch_size or (16 if args.quick else 128)
    workers = args.workers if args.workers is not None else (0 if args.quick else max(1, (os.cpu_count() or 2) - 1))
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)

    with tempfile.TemporaryDirectory(prefix="histofuse-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        slide, tiles_h5, n_tiles = prepare_slide(workdir, side, max_tiles=max_tiles, slide_mpp=args.slide_mpp)
        with h5py.File(tiles_h5, "r") as h5:
            coords = h5["coords"][()]
            read_px = int(h5.attrs["read_tile_px"])
        common = {
            "benchmark": BENCHMARK,
            "device": str(device),
            "device_name": device_name(device),
            "precision": precision,
            "batch_size": batch_size,
            "workers": workers,
            "tiles": n_tiles,
            "tile_px": STORED_TILE,
            "input_px": INPUT_PX,
            "slide_px": side,
            "slide_mpp": args.slide_mpp,
            "region_px": args.region_px,
            "region_decoder": args.region_decoder,
            "repeats": args.repeats,
            "quick": bool(args.quick),
            "git_revision": git_revision(),
            "versions": versions(),
        }
        settings = ExtractSettings(
            batch_size=batch_size,
            num_workers=workers,
            device=str(device),
            precision=precision,
            region_px=args.region_px,
            region_decoder=args.region_decoder,
        )
        for name in args.encoders:
            encoder = build_random_encoder(name)
            figures: dict[str, float] = {}
            runs: dict[str, list[float]] = {}
            figures["encoder_only"], runs["encoder_only"] = repeat(
                args.repeats,
                lambda: encoder_only(encoder, device=device, precision=precision, batch_size=batch_size, tiles=n_tiles),
            )
            figures["naive_loader"], runs["naive_loader"] = repeat(
                args.repeats,
                lambda: naive_loader(
                    encoder,
                    slide,
                    coords,
                    device=device,
                    precision=precision,
                    batch_size=batch_size,
                    workers=workers,
                    read_px=read_px,
                ),
            )
            digests: list[str] = []

            def end_to_end(run_settings: ExtractSettings = settings) -> float:
                rate, digest = histofuse_end_to_end(
                    encoder, slide, tiles_h5, workdir / f"{name}.h5", settings=run_settings
                )
                digests.append(digest)
                return rate

            decoder_used = {}

            figures["histofuse"], runs["histofuse"] = repeat(args.repeats, end_to_end)
            decoder_used["histofuse"] = _decoder_of(workdir / f"{name}.h5")
            main_features = _features_of(workdir / f"{name}.h5")
            cosines: dict[str, float] = {}
            for other in args.other_decoders:
                other_settings = dataclasses.replace(settings, region_decoder=other)
                out_h5 = workdir / f"{name}_{other}.h5"
                key = f"histofuse_decoder_{other}"
                figures[key], runs[key] = repeat(
                    args.repeats,
                    lambda s=other_settings, o=out_h5: histofuse_end_to_end(encoder, slide, tiles_h5, o, settings=s)[0],
                )
                decoder_used[key] = _decoder_of(out_h5)
                cosines[other] = min_cosine(main_features, _features_of(out_h5))
            no_work = dataclasses.replace(encoder, model=_NoWork(encoder.dim))
            figures["histofuse_no_encoder"], runs["histofuse_no_encoder"] = repeat(
                args.repeats,
                lambda: histofuse_end_to_end(no_work, slide, tiles_h5, workdir / "no_encoder.h5", settings=settings)[0],
            )
            if args.compare_decoders:
                reader_settings = dataclasses.replace(settings, region_decoder="reader")
                figures["histofuse_reader_decode"], runs["histofuse_reader_decode"] = repeat(
                    args.repeats, lambda: end_to_end(reader_settings)
                )
                if len(set(digests)) != 1:
                    raise SystemExit(f"{name}: features differ between the region decoders")
            for figure, value in figures.items():
                line = {**common, "encoder": name, "figure": figure, "unit": "tiles/s", "value": round(value, 2)}
                line["runs"] = [round(v, 2) for v in runs[figure]]
                if figure in ("histofuse", "histofuse_reader_decode"):
                    line["features_sha256"] = digests[-1]
                if figure in decoder_used:
                    line["region_decoder_used"] = decoder_used[figure]
                print(json.dumps(line), flush=True)
            ratios: list[tuple[str, str | None]] = [
                ("histofuse_over_encoder_only", "encoder_only"),
                ("histofuse_over_naive_loader", "naive_loader"),
            ]
            if args.compare_decoders:
                ratios.append(("histofuse_over_reader_decode", "histofuse_reader_decode"))
            ratios += [(f"histofuse_over_decoder_{other}", f"histofuse_decoder_{other}") for other in args.other_decoders]
            ratios += [(f"histofuse_decoder_{other}_over_encoder_only", None) for other in args.other_decoders]
            for figure, denominator in ratios:
                if denominator is None:  # histofuse_decoder_<x>_over_encoder_only
                    ratio = figures[figure.removesuffix("_over_encoder_only")] / figures["encoder_only"]
                else:
                    ratio = figures["histofuse"] / figures[denominator]
                print(json.dumps({**common, "encoder": name, "figure": figure, "unit": "ratio", "value": round(ratio, 3)}), flush=True)
            for other, cosine in cosines.items():
                line = {**common, "encoder": name, "figure": f"features_min_cosine_vs_decoder_{other}", "unit": "cosine"}
                print(json.dumps({**line, "value": round(cosine, 7)}), flush=True)


if __name__ == "__main__":
    main()

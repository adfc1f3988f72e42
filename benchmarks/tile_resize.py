"""Tile resizing in the loader workers: Pillow's BILINEAR against histofuse's (torch's uint8 kernel).

A tile read at another size than ``tile_px`` is resized in the worker that read it. On 40× slides
(about 0.25 µm/px) tiled at 0.5 µm/px every tile is read at about 512 px and shrunk to 256, so the
resize costs as much as decoding. In one run and on one thread (as in a loader worker):

- for each read size, tiles/s of Pillow (the baseline) and of
  :func:`histofuse.features.extract._resize`, their ratio, and how far their pixels are apart;
- ``read_path_*``: tiles/s of a loader worker's whole read path (region reads decoded by tifffile,
  tiles cut and resized) on a synthetic 40× slide (levels 4× apart, tiles read at 512 px from
  level 0), with Pillow's resize put in its place for the baseline, alternating passes.

    python benchmarks/tile_resize.py            # read sizes 512, 507, 1024 and 257 → 256 px
    python benchmarks/tile_resize.py --quick    # fewer repetitions, a smaller slide
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import histofuse.features.extract as extract  # noqa: E402
from extract_throughput import git_revision, prepare_slide, slide_dataset, versions  # noqa: E402
from histofuse.features.tile_loader import TILE_RESIZE, _resize  # noqa: E402

log = logging.getLogger("tile_resize")

BENCHMARK = "tile_resize"
CASES = ((512, 256), (507, 256), (1024, 256), (257, 256))
"""(read px, tile px): 40× at exactly 0.25 µm/px, 40× at 0.2525 µm/px, 80×, and 20× at 0.498 µm/px."""


def _pillow(tile: np.ndarray, side: int, out: np.ndarray | None = None) -> np.ndarray:
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(tile)).resize((side, side), Image.Resampling.BILINEAR))
    if out is None:
        return resized
    out[...] = resized
    return out


def read_path_rates(workdir: Path, side: int, passes: int) -> dict[str, list[float]]:
    """Tiles/s of single-process passes over a 40× slide's reads, with each resize (alternating)."""
    slide, tiles_h5, _ = prepare_slide(workdir, side, max_tiles=None, slide_mpp=0.25)
    dataset = slide_dataset(slide, tiles_h5)
    if dataset.read_tile_px == dataset.tile_px:
        raise SystemExit("the 40× slide's tiles are not resized: the synthetic pyramid is wrong")
    rates: dict[str, list[float]] = {"pillow": [], "histofuse": []}
    try:
        for index in range(len(dataset)):  # warm-up: files opened, pages cached
            dataset[index]
        for _ in range(passes):
            for name, resize in (("pillow", _pillow), ("histofuse", _resize)):
                extract._resize = resize  # the read path calls the module's resize
                start = time.perf_counter()
                count = sum(len(dataset[index][0]) for index in range(len(dataset)))
                rates[name].append(count / (time.perf_counter() - start))
    finally:
        extract._resize = _resize
        dataset.close()
    log.info("read path: %s", {name: [round(r) for r in values] for name, values in rates.items()})
    return rates


def _rate(func: object, tiles: list[np.ndarray], side: int, seconds: float) -> float:
    """Tiles/s of ``func`` cycling over ``tiles`` for about ``seconds``."""
    resize = func  # type: ignore[assignment]
    resize(tiles[0], side)  # type: ignore[operator]
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for tile in tiles:
            resize(tile, side)  # type: ignore[operator]
        done += len(tiles)
    return done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="0.3 s per figure instead of 3 s, an 8,192-px slide")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the 40× slide here (reused when present)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)  # as in a DataLoader worker
    seconds = 0.3 if args.quick else 3.0
    rng = np.random.default_rng(0)
    common = {
        "benchmark": BENCHMARK,
        "threads": 1,
        "cpu_count": os.cpu_count(),
        "resize": TILE_RESIZE,
        "quick": bool(args.quick),
        "git_revision": git_revision(),
        "versions": versions(),
    }
    for read_px, side in CASES:
        tiles = [(rng.random((read_px, read_px, 3)) * 255).astype(np.uint8) for _ in range(4)]
        pillow = _rate(_pillow, tiles, side, seconds)
        ours = _rate(_resize, tiles, side, seconds)
        difference = np.concatenate(
            [np.abs(_resize(t, side).astype(int) - _pillow(t, side).astype(int)).ravel() for t in tiles]
        )
        case = {**common, "read_px": read_px, "tile_px": side}
        for figure, unit, value in (
            ("pillow_tiles_per_s", "tiles/s", round(pillow, 1)),
            ("histofuse_tiles_per_s", "tiles/s", round(ours, 1)),
            ("histofuse_over_pillow", "ratio", round(ours / pillow, 3)),
            ("max_grey_level_difference", "grey levels", int(difference.max())),
            ("share_of_values_different", "fraction", round(float((difference > 0).mean()), 5)),
        ):
            print(json.dumps({**case, "figure": figure, "unit": unit, "value": value}), flush=True)
        log.info("%d → %d px: Pillow %.0f tiles/s, histofuse %.0f tiles/s", read_px, side, pillow, ours)

    with tempfile.TemporaryDirectory(prefix="histofuse-bench-") as scratch:
        side = 8192 if args.quick else 24576
        rates = read_path_rates(args.workdir or Path(scratch), side, passes=1 if args.quick else 3)
    median = {name: statistics.median(values) for name, values in rates.items()}
    path = {**common, "slide_px": side, "slide_mpp": 0.25}
    for name in ("pillow", "histofuse"):
        line = {**path, "figure": f"read_path_{name}_tiles_per_s", "unit": "tiles/s", "value": round(median[name], 1)}
        print(json.dumps({**line, "runs": [round(r, 1) for r in rates[name]]}), flush=True)
    ratio = round(median["histofuse"] / median["pillow"], 3)
    print(json.dumps({**path, "figure": "read_path_histofuse_over_pillow", "unit": "ratio", "value": ratio}), flush=True)


if __name__ == "__main__":
    main()

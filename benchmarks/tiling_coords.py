"""Tile coordinates from a tissue mask: histofuse's vectorised grid against a per-tile loop.

A synthetic 40x slide (0.25 µm/px level 0) large enough for ``--tiles`` tissue tiles at 0.5 µm/px,
256 px, with an elliptical tissue mask at 8 µm/px. Both methods must agree tile for tile; the
figures are the time per slide for each and their ratio, one JSON line each.

    python benchmarks/tiling_coords.py            # ~100k tissue tiles
    python benchmarks/tiling_coords.py --quick    # a small smoke check
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from histofuse.slides.reader import SlideInfo
from histofuse.slides.tiling import TilingSettings, compute_tile_grid, tile_geometry

MASK_MPP = 8.0
LEVEL0_MPP = 0.25


def synthetic_slide(tissue_tiles: int) -> tuple[SlideInfo, np.ndarray]:
    """A square slide whose inscribed-ellipse mask holds about ``tissue_tiles`` tiles."""
    tile_level0 = 256 * 0.5 / LEVEL0_MPP
    side_tiles = math.ceil(math.sqrt(tissue_tiles / (math.pi / 4)))
    side = int(side_tiles * tile_level0)
    downsamples = (1.0, 4.0, 16.0, 32.0)
    info = SlideInfo(
        path="synthetic",
        width=side,
        height=side,
        mpp=LEVEL0_MPP,
        mpp_source="synthetic",
        level_count=len(downsamples),
        level_dimensions=tuple((int(side / d), int(side / d)) for d in downsamples),
        level_downsamples=downsamples,
        vendor="synthetic",
    )
    mask_side = int(round(side * LEVEL0_MPP / MASK_MPP))
    yy, xx = np.mgrid[0:mask_side, 0:mask_side]
    centre = (mask_side - 1) / 2
    mask = ((xx - centre) ** 2 + (yy - centre) ** 2) <= centre**2
    return info, mask


def naive_tile_grid(info: SlideInfo, mask: np.ndarray, settings: TilingSettings) -> np.ndarray:
    """The baseline: visit every grid position and average the mask window under it."""
    geometry = tile_geometry(info, settings)
    size0 = geometry["tile_px_level0"]
    stride0 = geometry["stride_px_level0"]
    sx = mask.shape[1] / info.width
    sy = mask.shape[0] / info.height
    kept = []
    for y in range(0, info.height - size0 + 1, stride0):
        for x in range(0, info.width - size0 + 1, stride0):
            left = min(int(math.floor(x * sx)), mask.shape[1] - 1)
            top = min(int(math.floor(y * sy)), mask.shape[0] - 1)
            right = max(int(math.ceil((x + size0) * sx)), left + 1)
            bottom = max(int(math.ceil((y + size0) * sy)), top + 1)
            if mask[top:bottom, left:right].mean() >= settings.tissue_threshold:
                kept.append((x, y))
    return np.asarray(kept, dtype=np.int64).reshape(-1, 2)


def best_of(repeats: int, func, *args):  # type: ignore[no-untyped-def]
    times = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = func(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=100_000, help="tissue tiles in the synthetic slide")
    parser.add_argument("--quick", action="store_true", help="a 5,000-tile smoke check")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tiles = 5_000 if args.quick else args.tiles
    info, mask = synthetic_slide(tiles)
    settings = TilingSettings()

    vector_s, grid = best_of(args.repeats, compute_tile_grid, info, mask, settings)
    naive_s, naive = best_of(1, naive_tile_grid, info, mask, settings)
    if not np.array_equal(grid.coords, naive):
        raise SystemExit(f"vectorised and naive grids differ: {len(grid.coords)} vs {len(naive)} tiles")
    common = {"benchmark": "tiling_coords", "tissue_tiles": int(len(grid.coords)), "cores": 1}
    print(json.dumps({**common, "figure": "vectorised_s", "value": round(vector_s, 4)}))
    print(json.dumps({**common, "figure": "naive_loop_s", "value": round(naive_s, 4)}))
    print(json.dumps({**common, "figure": "speedup_naive_over_vectorised", "value": round(naive_s / vector_s, 1)}))


if __name__ == "__main__":
    main()

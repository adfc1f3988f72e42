"""Planning slide reads for extraction: neighbouring tiles share one large region read.

Reading a tile decodes every stored (JPEG) tile of the slide it touches; neighbouring grid tiles
touch the same stored tiles, so reading one region (about ``region_px`` pixels a side at the read
level) and cutting the tiles out of it decodes each stored tile once instead of up to four times,
and replaces many small reads by a few large ones.

Tiles share a read only where that cannot change their pixels: their level-0 offsets from the
region's corner must be whole pixels at the read level (always true at level 0; at other levels the
downsample must be an integer and divide the coordinates). Other tiles, and tiles alone in their
region, are read one by one exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_FILL = 0.25
"""Smallest share of a region its tiles must cover for one region read to beat single-tile reads
(an unaligned tile read decodes up to four stored tiles)."""


@dataclass(frozen=True, kw_only=True)
class ReadJob:
    """One read: a region (or a single tile) and the tiles cut out of it."""

    location: tuple[int, int]
    """Level-0 (x, y) of the region's top-left corner."""
    size: tuple[int, int]
    """(width, height) of the region at the read level."""
    indices: np.ndarray
    """(k,) int64 indices of the tiles in the tiles file."""
    offsets: np.ndarray
    """(k, 2) int64 (x, y) of each tile inside the region, in read-level pixels."""


def _integral_downsample(downsample: float) -> int | None:
    rounded = int(round(downsample))
    return rounded if rounded >= 1 and abs(downsample - rounded) < 1e-9 else None


def _single(coords: np.ndarray, index: int, read_tile_px: int) -> ReadJob:
    x, y = (int(v) for v in coords[index])
    return ReadJob(
        location=(x, y),
        size=(read_tile_px, read_tile_px),
        indices=np.array([index], dtype=np.int64),
        offsets=np.zeros((1, 2), dtype=np.int64),
    )


def plan_reads(coords: np.ndarray, *, downsample: float, read_tile_px: int, region_px: int) -> list[ReadJob]:
    """Group the tiles at level-0 ``coords`` (N, 2) into reads, ordered by their first tile.

    Tiles are bucketed by the ``region_px``-square cell of the read level their corner falls in;
    a bucket of two or more tiles is read as the bounding box of its tiles (at most
    ``region_px + read_tile_px`` a side) when the tiles cover at least :data:`MIN_FILL` of it.
    ``region_px`` below twice the tile size reads every tile alone. Every tile is in exactly one job.
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    n = coords.shape[0]
    factor = _integral_downsample(downsample)
    if n == 0:
        return []
    if factor is None or region_px < 2 * read_tile_px:
        return [_single(coords, i, read_tile_px) for i in range(n)]
    residue = coords % factor
    level = coords // factor
    keys = np.concatenate([residue, level // region_px], axis=1)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    order = np.argsort(inverse.ravel(), kind="stable")
    jobs: list[ReadJob] = []
    for index in np.split(order, np.cumsum(counts)[:-1]):
        corner_level = level[index].min(axis=0)
        offsets = level[index] - corner_level
        extent = offsets.max(axis=0) + read_tile_px
        fill = len(index) * read_tile_px**2 / float(extent[0] * extent[1])
        if len(index) == 1 or residue[index[0]].any() or fill < MIN_FILL:
            # alone, off the read level's pixel grid, or too sparse: read as single tiles
            jobs.extend(_single(coords, int(i), read_tile_px) for i in index)
            continue
        jobs.append(
            ReadJob(
                location=(int(corner_level[0] * factor), int(corner_level[1] * factor)),
                size=(int(extent[0]), int(extent[1])),
                indices=index.astype(np.int64),
                offsets=offsets,
            )
        )
    jobs.sort(key=lambda job: int(job.indices[0]))
    return jobs

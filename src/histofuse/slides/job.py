"""One slide's tiling job: tissue mask, its QC thumbnail, tile coordinates and the tile-grid QC.

Under ``on_error: skip`` a slide that cannot be tiled (unreadable, no resolution, no tissue…) gets
its outputs written all the same, the tiles file flagged as excluded (:mod:`histofuse.exclusions`),
so that the run goes on with the other slides and the exclusion reaches the report.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histofuse.errors import SlideError
from histofuse.exclusions import Exclusion, check_on_error, write_excluded_tiles
from histofuse.slides.mask import MaskSettings, mask_slide, read_mask_png, write_mask_png, write_png
from histofuse.slides.qc import write_tile_qc
from histofuse.slides.reader import open_slide
from histofuse.slides.tiling import TileGrid, TilingSettings, compute_tile_grid, write_tiles_h5

log = logging.getLogger(__name__)

STAGE = "tile"
_PLACEHOLDER_GREY = 200


@dataclass(frozen=True, kw_only=True)
class TileJob:
    """The inputs and outputs of one slide's tiling job."""

    slide: Path
    slide_id: str
    mpp: float | None
    reader: str
    mask: Path
    mask_qc: Path
    tiles: Path
    qc: Path


    @property
    def failed_qc(self) -> Path:
        """Where a failed slide's mask QC thumbnail is kept under ``on_error: stop``: ``qc/failed/{slide}.png``.

        Not an output of the job, so Snakemake does not delete it with the failed job's outputs.
        """
        return self.mask_qc.parent / "failed" / self.mask_qc.name


def no_tissue_error(
    job: TileJob, grid: TileGrid, settings: TilingSettings, *, mask: np.ndarray, size: tuple[int, int], qc: Path
) -> SlideError:
    """The error of a slide without a tile, saying what the mask measured (as its log does).

    ``size``: the slide's level-0 width and height.
    """
    coverage = 100 * float(mask.mean()) if mask.size else 0.0
    tile0 = int(grid.attrs["tile_px_level0"])
    if tile0 > min(size):
        found = f"the slide ({size[0]}×{size[1]} px) is smaller than one tile ({tile0} px at level 0)"
    elif not mask.any():
        found = "the tissue mask is empty: tissue 0.0 %"
    else:
        found = (
            f"the tissue mask covers {coverage:.1f} % of the slide, but no tile has a tissue fraction of "
            f"tiling.tissue_threshold {settings.tissue_threshold} or more: the tissue is scattered"
        )
    return SlideError(
        f"slide {job.slide_id}: no tissue found ({found}).",
        path=job.slide,
        fix=f"look at the QC thumbnail {qc}: if the slide holds tissue, lower "
        "tissue_mask.max_background_grey / tissue_mask.min_saturation or tiling.tissue_threshold; "
        "if it is blank, remove its row from the slides sheet (or set on_error: skip to exclude it).",
    )


def _tile(job: TileJob, mask_settings: MaskSettings, settings: TilingSettings, *, on_error: str) -> int:
    job.failed_qc.unlink(missing_ok=True)
    with open_slide(job.slide, reader=job.reader, mpp=job.mpp) as reader:
        mask_slide(reader, settings=mask_settings, mask_png=job.mask, qc_png=job.mask_qc)
        info = reader.info
    mask = read_mask_png(job.mask)
    grid = compute_tile_grid(info, mask, settings)
    size = (int(info.width), int(info.height))
    if grid.coords.shape[0] == 0:
        if on_error == "skip":
            raise no_tissue_error(job, grid, settings, mask=mask, size=size, qc=job.mask_qc)
        # the job's outputs are deleted when it fails: the thumbnail the message names is a copy
        job.failed_qc.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(job.mask_qc, job.failed_qc)
        raise no_tissue_error(job, grid, settings, mask=mask, size=size, qc=job.failed_qc)
    write_tiles_h5(grid, job.tiles, slide_id=job.slide_id, reader=job.reader)
    write_tile_qc(job.mask_qc, grid.coords, grid.attrs, job.qc)
    return int(grid.coords.shape[0])


def run_tile_job(job: TileJob, *, mask_settings: MaskSettings, settings: TilingSettings, on_error: str = "stop") -> int:
    """Tile one slide; the number of tiles (0 when the slide is excluded under ``on_error: skip``)."""
    check_on_error(on_error)
    try:
        return _tile(job, mask_settings, settings, on_error=on_error)
    except SlideError as err:
        if on_error != "skip":
            raise
        exclusion = Exclusion.from_error(err, slide=job.slide_id, stage=STAGE, file=job.slide)
    # keep the mask and its QC thumbnail when they were made (they show why: e.g. no tissue)
    if not (job.mask.is_file() and job.mask_qc.is_file()):
        write_mask_png(np.zeros((1, 1), dtype=bool), job.mask, mpp=0.0)
        write_png(np.full((64, 64, 3), _PLACEHOLDER_GREY, dtype=np.uint8), job.mask_qc)
    write_png(np.asarray(_read_rgb(job.mask_qc)), job.qc)
    write_excluded_tiles(job.tiles, exclusion)
    return 0


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))

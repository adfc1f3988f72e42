"""Planning a slide's reads: the slide checked against its tiles, and who decodes each read.

Reads go to tifffile (:mod:`histofuse.slides.tiff_regions`), the GPU's JPEG decoder
(:mod:`histofuse.features.device_regions`) or the slide reader, as ``features.region_decoder`` allows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from histofuse.errors import ConfigError, SlideError
from histofuse.features.device_regions import decodes_like_cpu, device_decoding_available
from histofuse.features.extract_settings import ExtractSettings
from histofuse.features.regions import ReadJob, plan_reads
from histofuse.features.stain import MacenkoNormaliser
from histofuse.features.tile_loader import RegionTileDataset
from histofuse.features.tile_spec import TileSpec
from histofuse.slides.jpeg_tiles import JpegTileReader
from histofuse.slides.reader import SlideInfo, open_slide
from histofuse.slides.tiff_regions import TiffRegionDecoder

log = logging.getLogger(__name__)


def check_slide(slide_path: Path, spec: TileSpec, reader: str, mpp: float | None) -> SlideInfo:
    """Open the slide once up front so that unreadable slides fail early; its pyramid."""
    with open_slide(slide_path, reader=reader, mpp=mpp) as slide:
        info = slide.info
    if not 0 <= spec.read_level < info.level_count:
        raise SlideError(
            f"tiles ask for pyramid level {spec.read_level} but the slide has {info.level_count} levels.",
            path=slide_path,
            fix="rerun tiling for this slide (the tiles file belongs to a different slide or reader).",
        )
    return info


def _tiff_reads(slide_path: Path, info: SlideInfo, jobs: list[ReadJob], level: int, choice: str) -> int:
    """How many of ``jobs`` tifffile decodes under ``features.region_decoder`` = ``choice``."""
    if choice == "reader" or not jobs:
        return 0
    try:
        decoder = TiffRegionDecoder(slide_path, info)
    except SlideError:
        if choice == "tifffile":
            raise
        return 0
    try:
        count = sum(decoder.can_read(job.location, level) for job in jobs)
    finally:
        decoder.close()
    if choice == "tifffile" and count < len(jobs):
        raise SlideError(
            f"features.region_decoder is 'tifffile' but {len(jobs) - count} of {len(jobs)} reads at level {level} "
            "cannot be decoded from the TIFF tiles (not a tiled 8-bit RGB JPEG level, or reads between its pixels).",
            path=slide_path,
            fix="set features.region_decoder to 'auto' (tifffile where it can, the slide reader elsewhere) or 'reader'.",
        )
    return count


def device_reader(
    slide_path: Path, info: SlideInfo, jobs: list[ReadJob], level: int, choice: str, device: torch.device
) -> JpegTileReader | None:
    """The stored-tile reader when ``features.region_decoder`` = ``choice`` decodes on the device.

    ``gpu`` needs a CUDA device that torchvision decodes JPEG on and every read on a qualifying
    level (a clear error otherwise). ``auto`` never decodes on the device: nvJPEG's pixels differ
    from libjpeg-turbo's by more than 2 grey levels on about 10 % of values of YCbCr tiles, and it
    ignores the colour transform of RGB-coded (Aperio) tiles (``benchmarks/gpu_jpeg_agreement.py``).
    """
    if choice != "gpu" or not jobs:
        return None
    if device.type != "cuda" or not device_decoding_available(str(device)):
        if choice == "gpu":
            raise ConfigError(
                f"features.region_decoder is 'gpu' but the extraction runs on {device}"
                + ("" if device.type != "cuda" else ", where torchvision cannot decode JPEG (no nvJPEG)")
                + ".",
                column="features.region_decoder",
                fix="run on a node with a CUDA GPU and a CUDA build of torchvision, or set "
                "features.region_decoder to 'auto'.",
            )
        return None
    try:
        reader = JpegTileReader(slide_path, info)
    except SlideError:
        if choice == "gpu":
            raise
        return None
    count = sum(reader.can_read(job.location, level) for job in jobs)
    if count == len(jobs):
        if not reader.rgb_coded(level) or decodes_like_cpu(reader.sample_stream(level), device):
            return reader
        reader.close()
        if choice == "gpu":
            raise SlideError(
                f"the GPU's JPEG decoder does not decode the RGB-coded JPEG tiles of level {level} as the CPU does "
                "(it ignores their Adobe colour-transform marker).",
                path=slide_path,
                fix="set features.region_decoder to 'auto' (the CPU decodes such slides) or 'tifffile'.",
            )
        log.warning("%s: RGB-coded JPEG tiles decoded differently on %s: decoding on the CPU", slide_path.name, device)
        return None
    reader.close()
    if choice == "gpu":
        raise SlideError(
            f"features.region_decoder is 'gpu' but {len(jobs) - count} of {len(jobs)} reads at level {level} "
            "cannot be decoded from the TIFF tiles (not a tiled 8-bit RGB JPEG level, or reads between its pixels).",
            path=slide_path,
            fix="set features.region_decoder to 'auto' (the GPU where it can, the CPU elsewhere) or 'reader'.",
        )
    return None


def slide_tile_dataset(
    slide_path: Path,
    spec: TileSpec,
    info: SlideInfo,
    settings: ExtractSettings,
    *,
    mpp: float | None,
    normaliser: MacenkoNormaliser | None = None,
) -> tuple[RegionTileDataset, int]:
    """The reads of a slide's tiles, as extraction makes them, and how many of them tifffile decodes.

    Neighbouring tiles share region reads of ``settings.region_px``; reads go to tifffile as
    ``settings.region_decoder`` allows (:func:`_tiff_reads`), the others to ``settings.reader``.
    """
    jobs = plan_reads(
        spec.coords,
        downsample=float(info.level_downsamples[spec.read_level]),
        read_tile_px=spec.read_tile_px,
        region_px=settings.region_px,
    )
    tiff_reads = _tiff_reads(slide_path, info, jobs, spec.read_level, settings.region_decoder)
    dataset = RegionTileDataset(
        slide_path=slide_path,
        jobs=jobs,
        read_level=spec.read_level,
        read_tile_px=spec.read_tile_px,
        tile_px=spec.tile_px,
        reader=settings.reader,
        mpp=mpp,
        normaliser=normaliser,
        tiff_info=info if tiff_reads else None,
    )
    return dataset, tiff_reads

"""Region reads straight from the JPEG tiles of a tiled TIFF (SVS, generic pyramidal TIFF).

OpenSlide decodes each stored tile into a premultiplied ARGB buffer and composites it with cairo;
for large reads of plain JPEG tiles that costs several times the decoding itself. Where a pyramid
level is stored as a tiled, JPEG-compressed, 8-bit RGB TIFF page, :class:`TiffRegionDecoder` reads
the tiles a region covers and decodes them with tifffile (libjpeg-turbo through imagecodecs),
which handles the formats' JPEG quirks (shared JPEG tables, Aperio's RGB-coded JPEG). Pixels
outside the image are white, as :class:`histofuse.slides.reader.OpenSlideReader` returns them.

A level qualifies only when its page has the dimensions OpenSlide reports for it; a read at a
level above 0 qualifies only when its level-0 location falls on a whole pixel of that level (the
reader resamples other locations). Tests check that the pixels equal OpenSlide's on real slides.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from histofuse.errors import SlideError
from histofuse.slides.reader_base import SlideInfo, unreadable_region_error

log = logging.getLogger(__name__)

__all__ = ["REGION_DECODERS", "TiffLevel", "TiffRegionDecoder", "check_region_decoder", "qualifying_levels"]

REGION_DECODERS = ("auto", "reader", "tifffile", "gpu")
"""``auto``: tifffile where a level qualifies, the slide reader elsewhere (never the GPU, whose
pixels differ from libjpeg-turbo's: ``benchmarks/gpu_jpeg_agreement.py``); ``reader``: always the slide reader; ``tifffile``: tifffile
for every read; ``gpu``: the GPU (:mod:`histofuse.features.device_regions`) for every read (both an
error where a level does not qualify)."""


def check_region_decoder(region_decoder: str, *, device: str, stain_norm: str | None) -> None:
    """Refuse settings under which ``region_decoder`` cannot work (checked before any job runs)."""
    from histofuse.errors import ConfigError

    if region_decoder not in REGION_DECODERS:
        raise ConfigError(
            f"unknown region decoder '{region_decoder}'.",
            column="features.region_decoder",
            fix=f"set features.region_decoder to one of: {', '.join(REGION_DECODERS)}.",
        )
    if region_decoder != "gpu":
        return
    if device == "cpu":
        raise ConfigError(
            "features.region_decoder is 'gpu' but features.device is 'cpu'.",
            column="features.region_decoder",
            fix="set features.device to 'auto' or 'cuda' on a node with a GPU, or features.region_decoder to 'auto'.",
        )
    if stain_norm is not None:
        raise ConfigError(
            f"features.region_decoder 'gpu' cannot be combined with features.stain_norm '{stain_norm}' "
            "(stain normalisation runs on the CPU, tile by tile).",
            column="features.region_decoder",
            fix="set features.region_decoder to 'auto' (which decodes on the CPU under stain normalisation).",
        )

_JPEG = 7


@dataclass(frozen=True)
class TiffLevel:
    """A pyramid level stored as a tiled, JPEG-compressed, 8-bit RGB TIFF page."""

    page: Any
    width: int
    height: int
    tile_w: int
    tile_h: int
    tiles_across: int
    downsample: float


def _qualifies(page: Any, width: int, height: int) -> bool:
    return bool(
        page.is_tiled
        and int(page.compression) == _JPEG
        and page.imagewidth == width
        and page.imagelength == height
        and page.samplesperpixel == 3
        and page.bitspersample == 8
        and int(page.planarconfig) == 1
        and page.imagedepth == 1
    )


def qualifying_levels(tif: Any, info: SlideInfo) -> dict[int, TiffLevel]:
    """The levels of ``info`` stored as a qualifying page of the open ``tifffile.TiffFile`` ``tif``."""
    levels: dict[int, TiffLevel] = {}
    pages = list(tif.pages)
    for level, ((width, height), downsample) in enumerate(
        zip(info.level_dimensions, info.level_downsamples, strict=True)
    ):
        for page in pages:
            if _qualifies(page, width, height):
                levels[level] = TiffLevel(
                    page=page,
                    width=width,
                    height=height,
                    tile_w=int(page.tilewidth),
                    tile_h=int(page.tilelength),
                    tiles_across=-(-width // int(page.tilewidth)),
                    downsample=float(downsample),
                )
                break
    return levels


def readable(entry: TiffLevel | None, location: tuple[int, int], level: int) -> bool:
    """Whether a read at ``location`` (level 0) from ``entry`` gives the slide reader's pixels."""
    if entry is None:
        return False
    if level == 0:
        return True
    return all(_whole(value / entry.downsample) for value in location)


class TiffRegionDecoder:
    """Region reads from the qualifying levels of one slide (open one per process)."""

    def __init__(self, path: str | Path, info: SlideInfo) -> None:
        import tifffile

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
        except (OSError, ValueError, tifffile.TiffFileError) as err:
            raise SlideError(
                f"tifffile cannot read the slide ({err}).",
                path=self.path,
                fix="set features.region_decoder to 'reader' (or 'auto') to read it with the slide reader.",
            ) from err
        self._lock = threading.Lock()
        self._levels = qualifying_levels(self._tif, info)

    @property
    def levels(self) -> tuple[int, ...]:
        """The pyramid levels whose pages qualify."""
        return tuple(sorted(self._levels))

    def can_read(self, location: tuple[int, int], level: int) -> bool:
        """Whether a read at ``location`` (level 0) and ``level`` gives the slide reader's pixels."""
        return readable(self._levels.get(level), location, level)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3) of ``size`` (w, h) at ``level``, top-left at level-0 ``location``."""
        if not self.can_read(location, level):
            raise SlideError(
                f"level {level} at {location} cannot be decoded from the TIFF tiles "
                "(the level is not a tiled 8-bit RGB JPEG page, or the location is between its pixels).",
                path=self.path,
                fix="set features.region_decoder to 'auto' or 'reader'.",
            )
        entry = self._levels[level]
        x0 = round(location[0] / entry.downsample)
        y0 = round(location[1] / entry.downsample)
        w, h = int(size[0]), int(size[1])
        xa, xb = max(x0, 0), min(x0 + w, entry.width)
        ya, yb = max(y0, 0), min(y0 + h, entry.height)
        inside = (xa, ya, xb, yb) == (x0, y0, x0 + w, y0 + h)
        # the tiles cover every pixel of a read inside the image: only reads past its edges need white
        out = np.empty((h, w, 3), dtype=np.uint8) if inside else np.full((h, w, 3), 255, dtype=np.uint8)
        if xa >= xb or ya >= yb:
            return out
        page = entry.page
        decode = page.decode
        for ty in range(ya // entry.tile_h, (yb - 1) // entry.tile_h + 1):
            for tx in range(xa // entry.tile_w, (xb - 1) // entry.tile_w + 1):
                index = ty * entry.tiles_across + tx
                data = self._read_bytes(int(page.dataoffsets[index]), int(page.databytecounts[index]))
                try:
                    segment, _, _ = decode(data, index, jpegtables=page.jpegtables)
                except Exception as err:  # imagecodecs raises its own codec errors for bad tile data
                    raise unreadable_region_error(self.path, location, level, err) from err
                tile = segment.reshape(segment.shape[-3:])
                top, left = ty * entry.tile_h, tx * entry.tile_w
                r0, r1 = max(ya, top), min(yb, top + entry.tile_h)
                c0, c1 = max(xa, left), min(xb, left + entry.tile_w)
                out[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0] = tile[r0 - top : r1 - top, c0 - left : c1 - left, :3]
        return out

    def _read_bytes(self, offset: int, count: int) -> bytes:
        handle = self._tif.filehandle
        with self._lock:
            handle.seek(offset)
            data: bytes = handle.read(count)
        if len(data) != count:
            raise SlideError(
                f"the slide file ends inside a stored tile (read {len(data)} of {count} bytes at offset {offset}).",
                path=self.path,
                fix="the file is truncated: copy it again from its source.",
            )
        return data

    def close(self) -> None:
        self._tif.close()


def _whole(value: float) -> bool:
    return abs(value - round(value)) < 1e-6

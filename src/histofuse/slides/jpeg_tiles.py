"""The stored JPEG tiles of a tiled TIFF/SVS level as complete JPEG streams, read on the CPU.

A tiled JPEG TIFF keeps each tile as an *abbreviated* JPEG stream: the quantisation and Huffman
tables shared by all tiles sit once in the page's ``JPEGTables`` tag (an SOI, the tables, an EOI).
Aperio SVS also codes its tiles as RGB, not YCbCr (TIFF photometric RGB), while a JPEG decoder
given a three-component stream without markers assumes YCbCr. :func:`complete_stream` turns a
stored tile into a stream any JPEG decoder reads as the TIFF means it: the shared tables spliced in
after the tile's SOI and, for RGB-coded tiles, an Adobe APP14 marker with transform 0 ("no colour
transform"). :class:`JpegTileReader` finds the tiles a region covers and reads their bytes (no
decoding), so that a GPU can decode them (:mod:`histofuse.features.device_regions`).

Only levels that :func:`histofuse.slides.tiff_regions.qualifying_levels` accepts are read, under the
same rule for reads at levels above 0 (:func:`~histofuse.slides.tiff_regions.readable`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histofuse.errors import SlideError
from histofuse.slides.reader_base import SlideInfo
from histofuse.slides.tiff_regions import TiffLevel, qualifying_levels, readable

__all__ = ["ADOBE_RGB", "JpegTileReader", "RegionTiles", "complete_stream"]

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
"""APP14 "Adobe" marker, version 100, transform 0: the three components are R, G, B as stored."""
_PHOTOMETRIC_RGB = 2


def complete_stream(tile: bytes, tables: bytes | None, *, rgb: bool) -> bytes:
    """A self-contained JPEG stream of a stored tile: ``tables`` (the ``JPEGTables`` tag) spliced in,
    and the :data:`ADOBE_RGB` marker when the tile is RGB-coded."""
    if tile[:2] != SOI:
        raise ValueError("a stored JPEG tile must start with an SOI marker")
    head = SOI + ADOBE_RGB if rgb else SOI
    if not tables:
        return head + tile[2:]
    if tables[:2] != SOI or tables[-2:] != EOI:
        raise ValueError("JPEGTables must be an SOI, tables, and an EOI")
    return head + tables[2:-2] + tile[2:]


@dataclass(frozen=True, kw_only=True)
class RegionTiles:
    """The stored tiles covering a region, row by row, and where the region sits among them."""

    streams: list[bytes]
    """Complete JPEG streams of ``rows`` × ``cols`` stored tiles."""
    rows: int
    cols: int
    tile_w: int
    tile_h: int
    origin: tuple[int, int]
    """Level pixel (x, y) of the first stored tile's top-left corner."""
    valid: tuple[int, int, int, int]
    """(x0, y0, x1, y1): the part of the region inside the image, in the region's own pixels."""
    size: tuple[int, int]
    """The region's (width, height)."""
    offset: tuple[int, int]
    """Level pixel (x, y) of the region's top-left corner."""


class JpegTileReader:
    """Stored-tile bytes of the qualifying levels of one slide; safe to share between threads."""

    def __init__(self, path: str | Path, info: SlideInfo) -> None:
        import tifffile

        self.path = Path(path)
        try:
            with tifffile.TiffFile(self.path) as tif:
                levels = qualifying_levels(tif, info)
                self._levels = {level: _Stored.of(entry) for level, entry in levels.items()}
        except (OSError, ValueError, tifffile.TiffFileError) as err:
            raise SlideError(
                f"tifffile cannot read the slide ({err}).",
                path=self.path,
                fix="set features.region_decoder to 'auto' or 'reader' to read it with the slide reader.",
            ) from err
        self._fd = os.open(self.path, os.O_RDONLY)

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(sorted(self._levels))

    def can_read(self, location: tuple[int, int], level: int) -> bool:
        stored = self._levels.get(level)
        return readable(stored.entry if stored else None, location, level)

    def rgb_coded(self, level: int) -> bool:
        """Whether the level's tiles are RGB-coded JPEG (TIFF photometric RGB, as Aperio writes them)."""
        return self._levels[level].rgb

    def sample_stream(self, level: int) -> bytes:
        """The complete stream of one stored tile of ``level`` (the middle one), to check a decoder on."""
        stored = self._levels[level]
        return self._stream(stored, len(stored.offsets) // 2)

    def region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> RegionTiles:
        """The stored tiles under a read of ``size`` (w, h) at ``level``, top-left at level-0 ``location``."""
        if not self.can_read(location, level):
            raise SlideError(
                f"level {level} at {location} cannot be decoded from the TIFF's JPEG tiles.",
                path=self.path,
                fix="set features.region_decoder to 'auto' or 'reader'.",
            )
        stored = self._levels[level]
        entry = stored.entry
        x0 = round(location[0] / entry.downsample)
        y0 = round(location[1] / entry.downsample)
        w, h = int(size[0]), int(size[1])
        xa, xb = min(max(x0, 0), entry.width), min(max(x0 + w, 0), entry.width)
        ya, yb = min(max(y0, 0), entry.height), min(max(y0 + h, 0), entry.height)
        valid = (xa - x0, ya - y0, xb - x0, yb - y0)
        if xa >= xb or ya >= yb:  # wholly outside the image
            return RegionTiles(
                streams=[], rows=0, cols=0, tile_w=entry.tile_w, tile_h=entry.tile_h,
                origin=(x0, y0), valid=(0, 0, 0, 0), size=(w, h), offset=(x0, y0),
            )  # fmt: skip
        tx0, tx1 = xa // entry.tile_w, (xb - 1) // entry.tile_w + 1
        ty0, ty1 = ya // entry.tile_h, (yb - 1) // entry.tile_h + 1
        index = (np.arange(ty0, ty1)[:, None] * entry.tiles_across + np.arange(tx0, tx1)[None, :]).ravel()
        return RegionTiles(
            streams=[self._stream(stored, int(i)) for i in index],
            rows=ty1 - ty0,
            cols=tx1 - tx0,
            tile_w=entry.tile_w,
            tile_h=entry.tile_h,
            origin=(tx0 * entry.tile_w, ty0 * entry.tile_h),
            valid=valid,
            size=(w, h),
            offset=(x0, y0),
        )

    def _stream(self, stored: _Stored, index: int) -> bytes:
        offset, count = int(stored.offsets[index]), int(stored.counts[index])
        data = os.pread(self._fd, count, offset)
        if len(data) != count:
            raise SlideError(
                f"the slide file ends inside a stored tile (read {len(data)} of {count} bytes at offset {offset}).",
                path=self.path,
                fix="the file is truncated: copy it again from its source.",
            )
        if count == 0:
            raise SlideError(
                f"stored tile {index} is empty (a sparse TIFF).",
                path=self.path,
                fix="set features.region_decoder to 'auto' or 'reader'.",
            )
        try:
            return complete_stream(data, stored.tables, rgb=stored.rgb)
        except ValueError as err:
            raise SlideError(
                f"stored tile {index} is not a JPEG stream ({err}).",
                path=self.path,
                fix="set features.region_decoder to 'reader' to read the slide with the slide reader.",
            ) from err

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JpegTileReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@dataclass(frozen=True)
class _Stored:
    """What reading a level's tiles needs, kept after the TIFF file is closed."""

    entry: TiffLevel
    offsets: np.ndarray
    counts: np.ndarray
    tables: bytes | None
    rgb: bool

    @classmethod
    def of(cls, entry: TiffLevel) -> _Stored:
        page = entry.page
        return cls(
            entry=entry,
            offsets=np.asarray(page.dataoffsets, dtype=np.int64),
            counts=np.asarray(page.databytecounts, dtype=np.int64),
            tables=bytes(page.jpegtables) if page.jpegtables else None,
            rgb=int(page.photometric) == _PHOTOMETRIC_RGB,
        )

"""Tiles decoded, assembled and cut on the device (``features.region_decoder: gpu``).

The CPU only reads bytes: a thread takes the planned reads (:mod:`histofuse.features.regions`) a
group at a time, reads the stored JPEG tiles each read covers and makes them complete streams
(:mod:`histofuse.slides.jpeg_tiles`). The device decodes a whole group in one batched
``torchvision.io.decode_jpeg`` call (nvJPEG on CUDA), lays each read's stored tiles out as one
image (pixels past the slide's edges white, as the slide reader returns them), cuts the tiles out
with one gather per read and resizes them to ``tile_px`` (antialiased bilinear, as on the CPU).
No decoded pixel crosses PCIe; the tiles go to the encoder as uint8 batches already on the device.

Run on the CPU (``device="cpu"``, libjpeg-turbo), the same code is what the tests compare against
the CPU decoders.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Generator, Iterator
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from histofuse.errors import SlideError
from histofuse.features.regions import ReadJob
from histofuse.slides.jpeg_tiles import JpegTileReader, RegionTiles
from histofuse.slides.reader import unreadable_region_error

log = logging.getLogger(__name__)

__all__ = ["DeviceTileChunks", "decodes_like_cpu", "device_batches", "device_decoding_available"]

_PREFETCH_GROUPS = 3
"""Groups of reads the reading thread keeps ready."""


@cache
def device_decoding_available(device: str) -> bool:
    """Whether torchvision decodes JPEG on ``device`` (a CUDA build with nvJPEG): one tiny decode."""
    from torchvision.io import decode_jpeg, encode_jpeg

    probe = encode_jpeg(torch.zeros((3, 16, 16), dtype=torch.uint8))
    try:
        decode_jpeg([probe], device=device)
    except (RuntimeError, NotImplementedError) as err:
        log.info("torchvision cannot decode JPEG on %s (%s)", device, err)
        return False
    return True


COLOUR_CHECK_MAX = 8
"""Grey levels a device decoder may differ from libjpeg-turbo on one tile before its colours are
taken as wrong (a decoder that ignored the Adobe marker of RGB-coded tiles is off by tens)."""


def decodes_like_cpu(stream: bytes, device: torch.device) -> bool:
    """Whether ``device`` decodes ``stream`` as libjpeg-turbo on the CPU does (colour space included)."""
    cpu = decode_streams([stream], torch.device("cpu"))[0].to(torch.int16)
    got = decode_streams([stream], device)[0].cpu().to(torch.int16)
    return cpu.shape == got.shape and int((cpu - got).abs().max()) <= COLOUR_CHECK_MAX


def decode_streams(streams: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """Each stream decoded to (3, h, w) uint8 RGB on ``device``, in one batched call."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not streams:
        return []
    data = [torch.frombuffer(bytearray(stream), dtype=torch.uint8) for stream in streams]
    decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return list(decoded) if isinstance(decoded, list) else [decoded]


def assemble_region(region: RegionTiles, decoded: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The read's pixels, (3, h, w) uint8, from its stored tiles decoded row by row."""
    w, h = region.size
    vx0, vy0, vx1, vy1 = region.valid
    if not decoded:
        return torch.full((3, h, w), 255, dtype=torch.uint8, device=device)
    th, tw = region.tile_h, region.tile_w
    stack = torch.stack(decoded)
    if stack.shape[-2:] != (th, tw):
        raise ValueError(f"stored tiles decode to {tuple(stack.shape[-2:])} px, the TIFF says {(th, tw)}")
    grid = stack.view(region.rows, region.cols, 3, th, tw).permute(2, 0, 3, 1, 4).reshape(3, region.rows * th, -1)
    x0 = region.offset[0] - region.origin[0]
    y0 = region.offset[1] - region.origin[1]
    if (vx0, vy0, vx1, vy1) == (0, 0, w, h):
        return grid[:, y0 : y0 + h, x0 : x0 + w]
    out = torch.full((3, h, w), 255, dtype=torch.uint8, device=device)
    out[:, vy0:vy1, vx0:vx1] = grid[:, y0 + vy0 : y0 + vy1, x0 + vx0 : x0 + vx1]
    return out


def cut_tiles(region: torch.Tensor, offsets: np.ndarray, read_px: int, tile_px: int) -> torch.Tensor:
    """The tiles at ``offsets`` (k, 2: x, y) of a (3, h, w) region, resized to ``tile_px``: (k, tile_px, tile_px, 3)."""
    device = region.device
    span = torch.arange(read_px, device=device)
    where = torch.as_tensor(offsets, dtype=torch.int64).to(device, non_blocking=True)
    rows = (where[:, 1, None] + span)[:, :, None]
    cols = (where[:, 0, None] + span)[:, None, :]
    tiles = region[:, rows, cols].permute(1, 0, 2, 3)  # (k, 3, read_px, read_px)
    if read_px != tile_px:
        # antialiased bilinear as on the CPU (torch's uint8 kernel there, float here: ±1 grey level)
        resized = F.interpolate(
            tiles.float(), size=(tile_px, tile_px), mode="bilinear", antialias=True, align_corners=False
        )
        tiles = resized.round_().clamp_(0, 255).to(torch.uint8)
    return tiles.permute(0, 2, 3, 1)


class DeviceTileChunks:
    """(tile indices, uint8 tiles on ``device``) for each read, decoded on the device.

    ``group_tiles``: reads are decoded together until their tiles reach this many (one batched
    decode call per group). Close it to stop the reading thread.
    """

    def __init__(
        self,
        *,
        slide_path: Path,
        reader: JpegTileReader,
        jobs: list[ReadJob],
        read_level: int,
        read_tile_px: int,
        tile_px: int,
        device: torch.device,
        group_tiles: int,
    ) -> None:
        self.slide_path = slide_path
        self.reader = reader
        self.jobs = jobs
        self.read_level = read_level
        self.read_tile_px = read_tile_px
        self.tile_px = tile_px
        self.device = device
        self.groups = _groups(jobs, max(group_tiles, 1))
        self._queue: queue.Queue[tuple[list[ReadJob], list[RegionTiles]] | BaseException | None] = queue.Queue(
            maxsize=_PREFETCH_GROUPS
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read_ahead(self) -> None:
        try:
            for group in self.groups:
                regions = [self.reader.region(job.location, self.read_level, job.size) for job in group]
                while not self._stop.is_set():
                    try:
                        self._queue.put((group, regions), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put(None)
        except BaseException as err:  # handed to the consuming thread, which raises it
            self._queue.put(err)

    def __iter__(self) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._read_ahead, name="histofuse-jpeg-bytes", daemon=True)
            self._thread.start()
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            group, regions = item
            yield from self._decode_group(group, regions)

    def _decode_group(
        self, group: list[ReadJob], regions: list[RegionTiles]
    ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        streams = [stream for region in regions for stream in region.streams]
        try:
            decoded = decode_streams(streams, self.device)
        except RuntimeError as err:  # nvJPEG / libjpeg errors on bad tile data
            raise unreadable_region_error(self.slide_path, group[0].location, self.read_level, err) from err
        start = 0
        for job, region in zip(group, regions, strict=True):
            count = len(region.streams)
            try:
                pixels = assemble_region(region, decoded[start : start + count], self.device)
            except ValueError as err:
                raise SlideError(
                    f"{err} (level {self.read_level}).",
                    path=self.slide_path,
                    fix="set features.region_decoder to 'auto' or 'reader'.",
                ) from err
            start += count
            yield job.indices, cut_tiles(pixels, job.offsets, self.read_tile_px, self.tile_px)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.1)
                except queue.Empty:
                    pass
            self._thread = None
        self.reader.close()


def _groups(jobs: list[ReadJob], group_tiles: int) -> list[list[ReadJob]]:
    groups: list[list[ReadJob]] = []
    current: list[ReadJob] = []
    count = 0
    for job in jobs:
        current.append(job)
        count += len(job.indices)
        if count >= group_tiles:
            groups.append(current)
            current, count = [], 0
    if current:
        groups.append(current)
    return groups


def device_batches(
    chunks: Iterator[tuple[np.ndarray, torch.Tensor]], batch_size: int
) -> Generator[tuple[np.ndarray, torch.Tensor], None, None]:
    """Device chunks regrouped into (indices, (B, tile_px, tile_px, 3)) batches of exactly ``batch_size`` (the last may be smaller)."""
    pending_idx: list[np.ndarray] = []
    pending: list[torch.Tensor] = []
    held = 0
    for indices, tiles in chunks:
        pending_idx.append(np.asarray(indices))
        pending.append(tiles)
        held += len(indices)
        if held < batch_size:
            continue
        all_idx = np.concatenate(pending_idx)
        all_tiles = torch.cat(pending)
        full = held // batch_size * batch_size
        for start in range(0, full, batch_size):
            yield all_idx[start : start + batch_size], all_tiles[start : start + batch_size]
        pending_idx, pending = [all_idx[full:]], [all_tiles[full:]]
        held -= full
    if held:
        yield np.concatenate(pending_idx), torch.cat(pending)

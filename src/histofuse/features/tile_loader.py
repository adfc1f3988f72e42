"""Reading a slide's tiles: one item per region read, loaded by persistent workers, regrouped into batches.

Neighbouring tiles share one region read and are cut out of it (resized to ``tile_px`` and
stain-normalised as set); a ``DataLoader`` runs the reads and hands uint8 tiles to the main process,
which regroups them into batches of exactly ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, get_worker_info

from histofuse.features.regions import ReadJob
from histofuse.features.stain import MacenkoNormaliser
from histofuse.features.tile_slots import TileSlots, received_chunks, slots_for
from histofuse.slides.reader import SlideInfo, SlideReader, open_slide
from histofuse.slides.tiff_regions import TiffRegionDecoder

_PREFETCH = 2
"""Reads each DataLoader worker keeps queued."""


class RegionTileDataset(Dataset[tuple[np.ndarray, torch.Tensor | int]]):
    """One item per :class:`ReadJob`: its tile indices (k,) and uint8 tiles (k, tile_px, tile_px, 3)
    (in a worker with ``slots``: the number of the slot holding the tiles).

    The slide reader opens lazily in each process (DataLoader workers open their own).
    """

    def __init__(
        self,
        *,
        slide_path: Path,
        jobs: list[ReadJob],
        read_level: int,
        read_tile_px: int,
        tile_px: int,
        reader: str,
        mpp: float | None,
        normaliser: MacenkoNormaliser | None = None,
        tiff_info: SlideInfo | None = None,
        slots: TileSlots | None = None,
    ) -> None:
        """``tiff_info``: the slide's pyramid, given to decode qualifying reads with tifffile.

        ``slots``: shared-memory tile slots; in a DataLoader worker an item then carries the number
        of the slot its tiles were cut into instead of the tiles (see :mod:`histofuse.features.tile_slots`).
        """
        self.slide_path = slide_path
        self.jobs = jobs
        self.read_level = read_level
        self.read_tile_px = read_tile_px
        self.tile_px = tile_px
        self.reader_name = reader
        self.mpp = mpp
        self.normaliser = normaliser
        self.tiff_info = tiff_info
        self.slots = slots
        self._reader: SlideReader | None = None
        self._tiff: TiffRegionDecoder | None = None

    def __len__(self) -> int:
        return len(self.jobs)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"] = None  # each worker opens its own
        state["_tiff"] = None
        return state

    def _open(self) -> SlideReader:
        if self._reader is None:
            self._reader = open_slide(self.slide_path, reader=self.reader_name, mpp=self.mpp)
        return self._reader

    def _read(self, job: ReadJob) -> np.ndarray:
        if self.tiff_info is not None:
            if self._tiff is None:
                self._tiff = TiffRegionDecoder(self.slide_path, self.tiff_info)
            if self._tiff.can_read(job.location, self.read_level):
                return self._tiff.read_region(job.location, self.read_level, job.size)
        return self._open().read_region(job.location, self.read_level, job.size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, torch.Tensor | int]:
        job = self.jobs[index]
        region = self._read(job)
        count = len(job.indices)
        if self.slots is None or get_worker_info() is None:
            tiles = np.empty((count, self.tile_px, self.tile_px, 3), dtype=np.uint8)
            self._cut(job, region, tiles)
            return job.indices, torch.from_numpy(tiles)
        slot = self.slots.acquire()
        try:
            self._cut(job, region, self.slots.view(slot, count).numpy())
        except BaseException:
            self.slots.release(slot)
            raise
        return job.indices, slot

    def _cut(self, job: ReadJob, region: np.ndarray, out: np.ndarray) -> None:
        """Write the job's tiles, cut out of its region (resized and normalised as set), into ``out``."""
        size = self.read_tile_px
        for k, (ox, oy) in enumerate(job.offsets):
            tile = region[oy : oy + size, ox : ox + size]
            if size != self.tile_px:
                tile = _resize(tile, self.tile_px, out[k])
            if self.normaliser is not None:
                out[k] = self.normaliser(np.ascontiguousarray(tile))
            elif size == self.tile_px:
                out[k] = tile

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._tiff is not None:
            self._tiff.close()
            self._tiff = None


class TileLoader:
    """The chunks of a :class:`RegionTileDataset`, read by ``num_workers`` persistent processes.

    Iterating gives one pass over the reads, as (tile indices, uint8 tiles) chunks in read order.
    With workers and ``shared_slots`` (the default) the workers hand tiles over in
    :class:`~histofuse.features.tile_slots.TileSlots`; without, through the ``DataLoader``'s own
    queue (one shared-memory segment per read). A chunk's tiles are valid until the next chunk is
    asked for. Close it (or use it as a context manager) to stop the workers.
    """

    def __init__(self, dataset: RegionTileDataset, *, num_workers: int, shared_slots: bool = True) -> None:
        self.dataset = dataset
        self.slots = (
            TileSlots(
                slots=slots_for(num_workers, _PREFETCH),
                capacity=max(len(job.indices) for job in dataset.jobs),
                tile_px=dataset.tile_px,
            )
            if shared_slots and num_workers > 0 and dataset.jobs
            else None
        )
        dataset.slots = self.slots
        self._loader: DataLoader[Any] | None = DataLoader(
            dataset,
            batch_size=None,
            shuffle=False,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            prefetch_factor=_PREFETCH if num_workers > 0 else None,
            # PyTorch's default collation (tile indices as tensors, each in a segment of its own)
            # is kept only to measure against
            collate_fn=_as_is if shared_slots else None,
        )

    def __iter__(self) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        if self._loader is None:
            raise RuntimeError("the tile loader is closed")
        return received_chunks(self._loader, self.slots)

    def close(self) -> None:
        self._loader = None  # the last reference: its persistent workers shut down
        self.dataset.close()
        if self.slots is not None:
            self.slots.close()
            self.slots = None

    def __enter__(self) -> TileLoader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def rebatch(
    chunks: Iterable[tuple[np.ndarray, torch.Tensor]], batch_size: int, *, pin: bool, reuse: bool = False
) -> Generator[tuple[np.ndarray, torch.Tensor], None, None]:
    """Regroup (indices, tiles) chunks of any size into batches of exactly ``batch_size`` (the last may be smaller).

    Each tile is copied once, from its chunk straight into the batch; with ``pin`` the batch lives
    in page-locked memory, ready for an asynchronous copy to the device. The copy is numpy's, on
    the calling thread: torch's would wake its intra-op thread pool, whose spinning threads take
    cores from the loader workers. With ``reuse`` every batch is the same buffer (no page faults
    on fresh memory for each batch): the consumer must be done with a batch before it asks for
    the next. Pinned batches come from torch's caching host allocator, which reuses them safely.
    """
    batch: torch.Tensor | None = None
    batch_np: np.ndarray | None = None
    kept: torch.Tensor | None = None
    batch_idx = np.empty(batch_size, dtype=np.int64)
    filled = 0
    for indices, tiles in chunks:
        start = 0
        count = len(indices)
        tiles_np = tiles.numpy()
        indices_np = np.asarray(indices)
        while start < count:
            if batch_np is None:
                shape = (batch_size, *tiles.shape[1:])
                if kept is not None and kept.shape == shape and kept.dtype == tiles.dtype:
                    batch = kept
                else:
                    batch = torch.empty(shape, dtype=tiles.dtype, pin_memory=pin)
                    kept = batch if reuse else None
                batch_np = batch.numpy()
            take = min(batch_size - filled, count - start)
            np.copyto(batch_np[filled : filled + take], tiles_np[start : start + take])
            batch_idx[filled : filled + take] = indices_np[start : start + take]
            filled += take
            start += take
            if filled == batch_size:
                assert batch is not None
                yield batch_idx.copy(), batch
                batch, batch_np, filled = None, None, 0
    if filled and batch is not None:
        yield batch_idx[:filled].copy(), batch[:filled]


def _as_is(item: Any) -> Any:
    """The loader's collate function: items pass unchanged (tile indices stay a small numpy array,
    pickled with the item, instead of a tensor in a shared-memory segment of its own)."""
    return item


TILE_RESIZE = "bilinear-antialias"
"""How tiles read at another size are resized to ``tile_px`` (recorded in the features file):
Pillow's antialiased bilinear filter, computed by torch's uint8 kernel."""


def _resize(tile: np.ndarray, side: int, out: np.ndarray | None = None) -> np.ndarray:
    """An (h, w, 3) uint8 tile resized to (side, side, 3) with :data:`TILE_RESIZE`, into ``out`` when given.

    torch's antialiased bilinear kernel for uint8 images gives Pillow's pixels (identical at 2×;
    when shrinking otherwise at most one grey level apart on under 1 % of values, when enlarging
    at most two) 2–5× faster. That matters on 40× slides, where every tile is read at about
    twice its size and resizing took more of a loader worker's time than decoding. The kernel
    returns channel planes; they are written into ``out`` one channel at a time, which costs a
    tenth of a strided (h, w, 3) copy.
    """
    image = torch.from_numpy(np.ascontiguousarray(tile)).permute(2, 0, 1).unsqueeze(0)  # channels-last
    planes = F.interpolate(image, size=(side, side), mode="bilinear", antialias=True, align_corners=False)[0].numpy()
    if out is None:
        out = np.empty((side, side, 3), dtype=np.uint8)
    for channel in range(3):
        out[..., channel] = planes[channel]
    return out

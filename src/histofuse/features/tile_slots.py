"""Shared-memory slots that carry tiles from DataLoader workers to the extracting process.

A ``DataLoader`` hands each worker's result to the main process through a fresh shared-memory
segment: the worker copies its tiles into it, the main process maps it, faults every page in as it
reads them, and unmaps it again: over 100 µs of the main process's time per tile
(``benchmarks/tile_transport.py``), which caps what that process, which also drives the GPU, can
feed an encoder at well under 10,000 tiles/s. :class:`TileSlots` allocates the shared memory once per slide: a worker takes a
free slot, cuts its tiles straight into it and returns only the slot's number; the main process
copies the tiles into the next batch and gives the slot back.

Slots must outnumber the reads a ``DataLoader`` can have in flight (``prefetch_factor`` per
worker) plus the one the main process is copying from; :func:`slots_for` gives that number.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
import os
import queue
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from histofuse.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["TileSlots", "received_chunks", "slots_for"]

POLL_S = 5.0
"""How often a worker waiting for a free slot checks that the process it works for still runs."""


def slots_for(num_workers: int, prefetch_factor: int) -> int:
    """Slots a ``DataLoader`` with these settings can never run out of."""
    return num_workers * prefetch_factor + 2


SHM_DIR = Path("/dev/shm")


def _check_shared_memory(nbytes: int, shm_dir: Path = SHM_DIR) -> None:
    """Fail with a clear error when ``shm_dir`` cannot hold ``nbytes`` (a process touching shared
    memory past the limit is killed by SIGBUS, with no message)."""
    if not shm_dir.is_dir():
        return
    stats = os.statvfs(shm_dir)
    free = stats.f_bavail * stats.f_frsize
    if nbytes > free:
        raise ConfigError(
            f"tile slots for the loader workers need {nbytes / 1e6:.0f} MB of shared memory, "
            f"but {shm_dir} has {free / 1e6:.0f} MB free.",
            column="features.num_workers",
            fix="lower features.num_workers or features.region_px, or give the job more shared memory "
            "(e.g. a larger /dev/shm, or docker --shm-size).",
        )


class TileSlots:
    """``slots`` × ``capacity`` uint8 tiles (``tile_px`` a side, RGB) in shared memory, and their free list.

    Create it in the main process before the ``DataLoader`` starts its workers; workers inherit it.
    """

    def __init__(
        self,
        *,
        slots: int,
        capacity: int,
        tile_px: int,
        wait_s: float | None = None,
        context: multiprocessing.context.BaseContext | None = None,
    ) -> None:
        """``wait_s``: longest wait for a free slot (``None``: as long as the creating process runs).

        ``context``: the multiprocessing context the workers start in (the default one, as a
        ``DataLoader`` without ``multiprocessing_context`` uses).
        """
        if slots < 1 or capacity < 1:
            raise ValueError(f"need at least one slot of one tile (got {slots} × {capacity})")
        self.slots = slots
        self.capacity = capacity
        self.wait_s = wait_s
        self._owner = os.getpid()
        _check_shared_memory(slots * capacity * tile_px * tile_px * 3)
        self.tiles = torch.empty((slots, capacity, tile_px, tile_px, 3), dtype=torch.uint8).share_memory_()
        self._free: multiprocessing.Queue[int] = (context or multiprocessing.get_context()).Queue()
        for slot in range(slots):
            self._free.put(slot)
        log.info("%d tile slots of %d tiles: %.0f MB of shared memory", slots, capacity, self.tiles.nbytes / 1e6)

    def acquire(self) -> int:
        """A free slot's number; waits while every slot is in use.

        A slot comes free when the extracting process takes the next read, which can take as long
        as encoding a batch. A worker whose extracting process has gone stops waiting.
        """
        waited = 0.0
        while True:
            step = POLL_S if self.wait_s is None else min(POLL_S, self.wait_s - waited)
            try:
                return self._free.get(timeout=max(step, 0.0))
            except queue.Empty:
                waited += step
            if os.getpid() != self._owner and os.getppid() != self._owner:
                raise RuntimeError("the extracting process has ended: no tile slot will come free")
            if self.wait_s is not None and waited >= self.wait_s:
                raise RuntimeError(
                    f"no tile slot came free in {self.wait_s:g} s: the extracting process stopped taking tiles"
                )

    def release(self, slot: int) -> None:
        """Give ``slot`` back for the next read."""
        self._free.put(slot)

    def view(self, slot: int, count: int) -> torch.Tensor:
        """The first ``count`` tiles of ``slot``: (count, tile_px, tile_px, 3)."""
        if count > self.capacity:
            raise ValueError(f"{count} tiles do not fit a slot of {self.capacity}")
        return self.tiles[slot, :count]

    def close(self) -> None:
        self._free.close()
        self._free.join_thread()


def received_chunks(
    items: Iterable[tuple[np.ndarray, torch.Tensor | int]], slots: TileSlots | None
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(indices, tiles) of each loader item; items that name a slot are read from it.

    A slot goes back to the free list when the consumer asks for the next chunk, so the consumer
    must be done with a chunk's tiles by then (:func:`histofuse.features.tile_loader.rebatch` copies
    them into its batch).
    """
    for indices, tiles in items:
        if isinstance(tiles, torch.Tensor):
            yield indices, tiles
            continue
        if slots is None:
            raise RuntimeError("a loader item names a tile slot, but no slots were given")
        slot = int(tiles)
        try:
            yield indices, slots.view(slot, len(indices))
        finally:
            slots.release(slot)

"""Per-slide feature extraction: tiles listed in ``tiles.h5`` → encoder features in ``features.h5``.

Reading: neighbouring tiles share one region read (about ``region_px`` a side at the read level,
see :mod:`histofuse.features.regions`) and are cut out of it; isolated tiles are read alone. A
``DataLoader`` runs the reads (each worker opens its own slide reader; workers persist while the
slide is read), optionally stain-normalises each tile (Macenko, :mod:`histofuse.features.stain`),
and hands uint8 tiles to the main process, which regroups them into batches of exactly
``batch_size``. On CUDA batches go through pinned memory with non-blocking copies, and the next
batch is prepared while the device works on the current one.

Encoding: conversion, resizing and normalisation happen on the device; the model runs in
channels-last memory format under ``torch.inference_mode`` (and autocast for bf16/fp16), optionally
compiled with ``torch.compile``. The output is written atomically and is self-describing:
``features`` (N × dim float32) and ``coords`` (N × 2 int64, level-0 x, y) as in CLAM / TRIDENT,
plus the encoder's identity and every tiling attribute of the input. Features do not depend on
how tiles were grouped into reads or batches.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, get_worker_info
from tqdm import tqdm

from histofuse import __version__
from histofuse.errors import ConfigError, HistofuseError, SlideError
from histofuse.features.device_regions import (
    DeviceTileChunks,
    decodes_like_cpu,
    device_batches,
    device_decoding_available,
)
from histofuse.features.encoders import Encoder
from histofuse.features.regions import ReadJob, plan_reads
from histofuse.features.stain import STAIN_NORMS, MacenkoNormaliser, load_normaliser
from histofuse.features.tile_slots import TileSlots, received_chunks, slots_for
from histofuse.h5files import (
    COORDS,
    FEATURES,
    create_features,
    read_attrs,
    read_features_file,
    read_tiles_full,
    writing,
)
from histofuse.slides.jpeg_tiles import JpegTileReader
from histofuse.slides.reader import SlideInfo, SlideReader, open_slide
from histofuse.slides.tiff_regions import TiffRegionDecoder, check_region_decoder

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_REQUIRED_TILE_ATTRS = ("read_level", "read_tile_px", "tile_px")
_COPIED_DATASETS = ("tissue_fraction",)
_PREFETCH = 2
"""Reads each DataLoader worker keeps queued."""


class ExtractionCancelled(RuntimeError):
    """Extraction was stopped by its caller (nothing was written)."""


@dataclass(frozen=True, kw_only=True)
class ExtractSettings:
    """How tiles are read and encoded."""

    batch_size: int = 64
    num_workers: int = 0
    """DataLoader worker processes reading tiles (0: read in the main process)."""
    device: str = "auto"
    """auto | cpu | cuda (or cuda:N); auto uses CUDA when available."""
    precision: str = "auto"
    """auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16."""
    reader: str = "openslide"
    region_px: int = 2048
    """Side (read-level px) of the regions neighbouring tiles share; 0 reads every tile alone."""
    region_decoder: str = "auto"
    """auto | reader | tifffile | gpu: who decodes the reads (see :mod:`histofuse.slides.tiff_regions`
    and :mod:`histofuse.features.device_regions`)."""
    compile: bool = False
    """Compile the encoder with ``torch.compile`` (pays a one-off compile time per process)."""
    stain_norm: str | None = None
    """``None`` (off) or ``"macenko"``: normalise each tile's stains to ``stain_target``."""
    stain_target: str | None = None
    """RGB image of H&E tissue whose stains tiles are normalised to (required with ``stain_norm``)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("features.batch_size must be at least 1.", column="features.batch_size")
        if self.num_workers < 0:
            raise ConfigError("features.num_workers must be 0 or more.", column="features.num_workers")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ConfigError(
                f"unknown device '{self.device}'.",
                column="features.device",
                fix=f"set features.device to one of: {', '.join(DEVICES)} (or cuda:N).",
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision '{self.precision}'.",
                column="features.precision",
                fix=f"set features.precision to one of: {', '.join(PRECISIONS)}.",
            )
        if self.region_px < 0:
            raise ConfigError(
                "features.region_px must be 0 or more.",
                column="features.region_px",
                fix="use e.g. 2048 (tiles share region reads) or 0 (every tile read alone).",
            )
        check_region_decoder(self.region_decoder, device=self.device, stain_norm=self.stain_norm)
        if self.stain_norm is not None and self.stain_norm not in STAIN_NORMS:
            raise ConfigError(
                f"unknown stain normalisation '{self.stain_norm}'.",
                column="features.stain_norm",
                fix=f"set features.stain_norm to null or one of: {', '.join(STAIN_NORMS)}.",
            )
        if self.stain_norm is not None and not self.stain_target:
            raise ConfigError(
                f"features.stain_norm is '{self.stain_norm}' but no target image is given.",
                column="features.stain_target",
                fix="set features.stain_target to an RGB image of H&E tissue to normalise to, "
                "or set features.stain_norm to null.",
            )


def resolve_device(name: str) -> torch.device:
    """The torch device for a ``device`` setting; asking for CUDA without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"features.device is '{name}' but PyTorch sees no CUDA GPU on this machine.",
            column="features.device",
            fix="set features.device to 'auto' or 'cpu', or run on a node with a GPU and a CUDA build of PyTorch.",
        )
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` → bf16 on CUDA, fp32 elsewhere; explicit values are kept."""
    if name != "auto":
        return name
    return "bf16" if device.type == "cuda" else "fp32"


# ------------------------------------------------------------------------------------------- tiles


@dataclass(frozen=True, kw_only=True)
class TileSpec:
    """Where and how to read the tiles of one slide (from ``tiles.h5``)."""

    coords: np.ndarray
    read_level: int
    read_tile_px: int
    tile_px: int
    attrs: dict[str, Any]
    coords_attrs: dict[str, Any]
    extra: dict[str, np.ndarray]


def read_tile_spec(tiles_h5: str | Path) -> TileSpec:
    """Coordinates, geometry and attributes of a tiles file, validated against the contract."""
    path = Path(tiles_h5)
    fix = "rerun tiling for this slide (delete the tiles file so the pipeline rebuilds it)."
    if not path.is_file():
        raise HistofuseError("tiles file does not exist.", path=path, fix=fix)
    try:
        coords, attrs, coords_attrs, extra = read_tiles_full(path, _COPIED_DATASETS)
    except KeyError:
        raise HistofuseError(f"tiles file has no '{COORDS}' dataset.", path=path, fix=fix) from None
    except OSError as err:
        raise HistofuseError(f"cannot read the tiles file ({err}).", path=path, fix=fix) from err
    missing = [key for key in _REQUIRED_TILE_ATTRS if key not in attrs]
    if missing:
        raise HistofuseError(f"tiles file lacks the attributes {', '.join(missing)}.", path=path, fix=fix)
    return TileSpec(
        coords=coords,
        read_level=int(attrs["read_level"]),
        read_tile_px=int(attrs["read_tile_px"]),
        tile_px=int(attrs["tile_px"]),
        attrs=attrs,
        coords_attrs=coords_attrs,
        extra=extra,
    )


# ------------------------------------------------------------------------------------------ reads


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


def _rebatch(
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


# ---------------------------------------------------------------------------------------- encoding


@dataclass(frozen=True, kw_only=True)
class _Preprocess:
    """uint8 (B, H, W, 3) on the device → normalised float (B, 3, input_px, input_px)."""

    mean: torch.Tensor
    std: torch.Tensor
    input_px: int

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.input_px or x.shape[-2] != self.input_px:
            x = F.interpolate(
                x, size=(self.input_px, self.input_px), mode="bilinear", antialias=True, align_corners=False
            )
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last)


def _preprocess_for(encoder: Encoder, device: torch.device) -> _Preprocess:
    def channel_vector(values: tuple[float, float, float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    return _Preprocess(
        mean=channel_vector(encoder.mean),
        std=channel_vector(encoder.std),
        input_px=encoder.input_px,
    )



def _autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    dtype = _AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _prepare_model(encoder: Encoder, device: torch.device, *, compile_model: bool) -> nn.Module:
    """The encoder on ``device`` in channels-last format, compiled when asked."""
    # channels-last suits cuDNN and oneDNN alike (about 1.5× faster on CPU for the CNN encoders)
    model = encoder.model.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    model.eval()
    if compile_model:
        log.info("compiling %s with torch.compile (one-off cost per process)", encoder.name)
        return torch.compile(model)  # type: ignore[return-value]
    return model


class _Fetched:
    """A batch's features on their way back to the host.

    On CUDA the copy is queued right behind the batch's kernels into page-locked memory, and an
    event marks its end: waiting for the event waits for this batch only, never for the batches
    queued after it (a plain ``.cpu()`` would wait for everything on the stream).
    """

    def __init__(self, features: torch.Tensor, device: torch.device) -> None:
        if device.type == "cuda":
            self.host = torch.empty(features.shape, dtype=features.dtype, pin_memory=True)
            self.host.copy_(features, non_blocking=True)
            self.event: torch.cuda.Event | None = torch.cuda.Event()
            self.event.record()
        else:
            self.host = features
            self.event = None

    def numpy(self) -> np.ndarray:
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy()


def _encode_batches(
    batches: Iterable[tuple[np.ndarray, torch.Tensor]],
    *,
    encoder: Encoder,
    model: nn.Module,
    device: torch.device,
    precision: str,
    pad_to: int | None = None,
) -> Generator[tuple[np.ndarray, np.ndarray], None, None]:
    """(tile indices, float32 features) of each batch, in batch order.

    Results are handed out one batch late: while the device encodes batch k, the host writes the
    features of batch k-1 and assembles batch k+1. ``pad_to`` pads short batches to that size (a
    compiled model then sees one shape only).
    """
    preprocess = _preprocess_for(encoder, device)
    non_blocking = device.type == "cuda"
    pending: tuple[np.ndarray, _Fetched] | None = None
    with torch.inference_mode():
        for indices, batch in batches:
            n = batch.shape[0]
            if pad_to is not None and n < pad_to:
                batch = torch.cat([batch, batch.new_zeros((pad_to - n, *batch.shape[1:]))])
            x = preprocess(batch.to(device, non_blocking=non_blocking))
            with _autocast(device, precision):
                features = model(x)
            fetched = _Fetched(features[:n].float(), device)
            if pending is not None:
                yield pending[0], pending[1].numpy()
            pending = (indices, fetched)
        if pending is not None:
            yield pending[0], pending[1].numpy()


# ------------------------------------------------------------------------------------------ output


def _check_slide(slide_path: Path, spec: TileSpec, reader: str, mpp: float | None) -> SlideInfo:
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


def _device_reader(
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


def _feature_attrs(
    *,
    spec: TileSpec,
    encoder: Encoder,
    precision: str,
    device: torch.device,
    settings: ExtractSettings,
) -> dict[str, Any]:
    """A features file's attributes: the tiles file's, then the encoder's and the extraction's."""
    attrs = dict(spec.attrs)
    if "histofuse_version" in spec.attrs:
        attrs["tiles_histofuse_version"] = spec.attrs["histofuse_version"]
    attrs.update(
        encoder=encoder.name,
        dim=int(encoder.dim),
        encoder_input_px=int(encoder.input_px),
        precision=precision,
        weights_sha256=encoder.weights_sha256,
        weights_path=encoder.weights_path,
        histofuse_version=__version__,
        device=str(device),
        n_tiles=int(spec.coords.shape[0]),
        source="extracted",
        stain_norm=settings.stain_norm or "none",
        tile_resize=TILE_RESIZE if spec.read_tile_px != spec.tile_px else "none",
    )
    if settings.stain_target:
        attrs["stain_target"] = str(settings.stain_target)
    return attrs


def _decoder_label(tiff_reads: int, reads: int, reader: str) -> str:
    """``tifffile``, the reader's name, or ``tifffile+<reader>`` when the reads were split."""
    if tiff_reads == reads and reads:
        return "tifffile"
    return reader if tiff_reads == 0 else f"tifffile+{reader}"


def _progress(total: int, label: str) -> tqdm:
    """A per-slide progress bar on stderr; sparse updates when stderr is a log file, not a terminal."""
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=label,
        unit="tile",
        file=sys.stderr,
        mininterval=0.5 if interactive else 30.0,
        leave=not interactive,
        dynamic_ncols=interactive,
    )


def _tile_batches(
    slide_path: Path,
    info: Any,
    spec: TileSpec,
    dataset: Any,
    tiff_reads: int,
    settings: ExtractSettings,
    device: torch.device,
) -> tuple[TileLoader | DeviceTileChunks, Generator[Any, None, None], str]:
    """The tile source (GPU-decoded chunks or CPU reader processes), its batches and the decoder's label."""
    jobs = dataset.jobs
    device_reader = _device_reader(slide_path, info, jobs, spec.read_level, settings.region_decoder, device)
    if device_reader is not None:
        chunks = DeviceTileChunks(
            slide_path=slide_path,
            reader=device_reader,
            jobs=jobs,
            read_level=spec.read_level,
            read_tile_px=spec.read_tile_px,
            tile_px=spec.tile_px,
            device=device,
            group_tiles=settings.batch_size,
        )
        log.info("%s: every read decoded on %s from the stored JPEG tiles", slide_path.name, device)
        return chunks, device_batches(iter(chunks), settings.batch_size), "gpu"
    on_cuda = device.type == "cuda"
    loader = TileLoader(dataset, num_workers=settings.num_workers)
    # on the CPU a batch is converted to a new tensor before the next is asked for: one buffer serves
    batches = _rebatch(iter(loader), settings.batch_size, pin=on_cuda, reuse=not on_cuda)
    return loader, batches, _decoder_label(tiff_reads, len(jobs), settings.reader)


def _write_header(
    h5: h5py.File,
    *,
    spec: TileSpec,
    encoder: Encoder,
    precision: str,
    device: torch.device,
    settings: ExtractSettings,
) -> None:
    """The features dataset (to be filled), the tiles' coordinates and extra datasets, the attributes."""
    create_features(
        h5,
        n_tiles=int(spec.coords.shape[0]),
        dim=int(encoder.dim),
        coords=spec.coords,
        coords_attrs=spec.coords_attrs,
        extra=spec.extra,
        attrs=_feature_attrs(spec=spec, encoder=encoder, precision=precision, device=device, settings=settings),
    )


def _write_encoded(
    features: h5py.Dataset,
    encoded: Iterator[tuple[np.ndarray, np.ndarray]],
    *,
    n: int,
    label: str,
    cancelled: Callable[[], bool] | None,
) -> None:
    """Write each encoded chunk at its tiles' rows; stop with :class:`ExtractionCancelled` when asked."""
    done = 0
    with _progress(n, label) as bar:
        for indices, chunk in encoded:
            if cancelled is not None and cancelled():
                raise ExtractionCancelled(f"extraction of {label} cancelled after {done} of {n} tiles")
            order = np.argsort(indices)
            features[indices[order]] = chunk[order]
            done += len(indices)
            bar.update(len(indices))
    if done != n:  # pragma: no cover - every tile is in exactly one read
        raise RuntimeError(f"encoded {done} of {n} tiles")


def extract_slide_features(
    *,
    slide_path: str | Path,
    tiles_h5: str | Path,
    out_h5: str | Path,
    encoder: Encoder,
    settings: ExtractSettings,
    mpp: float | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> int:
    """Encode every tile of ``tiles_h5`` and write ``out_h5`` atomically; returns the number of tiles.

    ``mpp`` overrides the slide's level-0 resolution (as in the slides sheet) when opening it.
    ``cancelled`` is asked after every batch; when it says so, extraction stops with
    :class:`ExtractionCancelled` and writes nothing (a served job whose client has gone).
    """
    slide_path = Path(slide_path)
    spec = read_tile_spec(tiles_h5)
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    tiles_reader = spec.attrs.get("reader")
    if tiles_reader is not None and tiles_reader != settings.reader:
        log.warning(
            "tiles of %s were made with reader '%s', extracting with '%s'", slide_path, tiles_reader, settings.reader
        )
    info = _check_slide(slide_path, spec, settings.reader, mpp)
    normaliser = load_normaliser(settings.stain_norm, settings.stain_target)

    n = int(spec.coords.shape[0])
    dataset, tiff_reads = slide_tile_dataset(slide_path, spec, info, settings, mpp=mpp, normaliser=normaliser)
    jobs = dataset.jobs
    shared = sum(len(job.indices) for job in jobs if len(job.indices) > 1)
    log.info(
        "%s: %d tiles in %d reads (%d tiles share region reads; %d reads decoded by tifffile, %d by %s)",
        slide_path.name,
        n,
        len(jobs),
        shared,
        tiff_reads,
        len(jobs) - tiff_reads,
        settings.reader,
    )
    model = _prepare_model(encoder, device, compile_model=settings.compile)
    loader, batches, decoder_label = _tile_batches(slide_path, info, spec, dataset, tiff_reads, settings, device)
    encoded = _encode_batches(
        batches,
        encoder=encoder,
        model=model,
        device=device,
        precision=precision,
        pad_to=settings.batch_size if settings.compile else None,
    )
    label = str(spec.attrs.get("slide_id", slide_path.stem))
    start = time.perf_counter()
    try:
        with writing(out_h5) as h5:
            _write_header(h5, spec=spec, encoder=encoder, precision=precision, device=device, settings=settings)
            h5.attrs["region_decoder"] = decoder_label
            _write_encoded(h5[FEATURES], encoded, n=n, label=label, cancelled=cancelled)
    finally:
        encoded.close()
        batches.close()
        loader.close()
    elapsed = time.perf_counter() - start
    log.info(
        "%s: %d tiles encoded with %s on %s (%s) in %.1f s, %.1f tiles/s",
        label,
        n,
        encoder.name,
        device,
        precision,
        elapsed,
        n / elapsed if elapsed > 0 else 0.0,
    )
    return n


# ----------------------------------------------------------------------------------------- reading


def read_features(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``features`` (N × dim float32), ``coords`` (N × 2 int64) and the attributes of a features file."""
    path = Path(path)
    fix = "rerun feature extraction for this slide (delete the file so the pipeline rebuilds it)."
    if not path.is_file():
        raise HistofuseError("features file does not exist.", path=path, fix=fix)
    try:
        return read_features_file(path)
    except (OSError, KeyError) as err:
        raise HistofuseError(f"cannot read the features file ({err}).", path=path, fix=fix) from err


def check_features_encoder(path: str | Path, expected_encoder: str, *, expected_sha256: str | None = None) -> None:
    """Raise :class:`HistofuseError` unless ``path`` was written by ``expected_encoder``.

    With ``expected_sha256`` the encoder's weights must match as well.
    """
    path = Path(path)
    fix = (
        "rerun feature extraction with the configured encoder: delete this features file (or the "
        "features folder) so the pipeline rebuilds it, or set features.encoder back to the encoder used."
    )
    if not path.is_file():
        raise HistofuseError("features file does not exist.", path=path, fix=fix)
    try:
        attrs = read_attrs(path)
    except OSError as err:
        raise HistofuseError(f"cannot read the features file ({err}).", path=path, fix=fix) from err
    found, found_sha = attrs.get("encoder"), attrs.get("weights_sha256")
    if found != expected_encoder:
        raise HistofuseError(
            f"features were extracted with encoder '{found}', but '{expected_encoder}' is configured.",
            path=path,
            fix=fix,
        )
    if expected_sha256 is not None and found_sha != expected_sha256:
        raise HistofuseError(
            f"features were extracted with other weights of encoder '{found}' (sha256 {str(found_sha)[:12]}…, "
            f"expected {expected_sha256[:12]}…).",
            path=path,
            fix=fix,
        )

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
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from histofuse import h5layout
from histofuse.features.device_regions import DeviceTileChunks, device_batches
from histofuse.features.encoders import Encoder
from histofuse.features.encoding import encode_batches, prepare_model
from histofuse.features.extract_settings import DEVICES, PRECISIONS, ExtractSettings, resolve_device, resolve_precision
from histofuse.features.feature_files import check_features_encoder, read_features
from histofuse.features.slide_reads import check_slide, device_reader, slide_tile_dataset
from histofuse.features.stain import load_normaliser
from histofuse.features.tile_loader import TILE_RESIZE, RegionTileDataset, TileLoader, rebatch
from histofuse.features.tile_spec import TileSpec, read_tile_spec
from histofuse.slides.reader import SlideInfo

__all__ = [
    "DEVICES",
    "PRECISIONS",
    "ExtractSettings",
    "ExtractionCancelled",
    "RegionTileDataset",
    "TileLoader",
    "TileSpec",
    "check_features_encoder",
    "extract_slide_features",
    "read_features",
    "read_tile_spec",
    "resolve_device",
    "resolve_precision",
    "slide_tile_dataset",
]

log = logging.getLogger(__name__)

Batches = Generator[tuple[np.ndarray, torch.Tensor], None, None]


class ExtractionCancelled(RuntimeError):
    """Extraction was stopped by its caller (nothing was written)."""


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


def _open_batches(
    slide_path: Path,
    spec: TileSpec,
    info: SlideInfo,
    settings: ExtractSettings,
    *,
    mpp: float | None,
    device: torch.device,
) -> tuple[TileLoader | DeviceTileChunks, Batches, str]:
    """The loader of a slide's tiles, its batches of ``settings.batch_size``, and who decodes the reads."""
    normaliser = load_normaliser(settings.stain_norm, settings.stain_target)
    dataset, tiff_reads = slide_tile_dataset(slide_path, spec, info, settings, mpp=mpp, normaliser=normaliser)
    jobs = dataset.jobs
    shared = sum(len(job.indices) for job in jobs if len(job.indices) > 1)
    log.info(
        "%s: %d tiles in %d reads (%d tiles share region reads; %d reads decoded by tifffile, %d by %s)",
        slide_path.name,
        int(spec.coords.shape[0]),
        len(jobs),
        shared,
        tiff_reads,
        len(jobs) - tiff_reads,
        settings.reader,
    )
    on_device = device_reader(slide_path, info, jobs, spec.read_level, settings.region_decoder, device)
    if on_device is not None:
        chunks = DeviceTileChunks(
            slide_path=slide_path,
            reader=on_device,
            jobs=jobs,
            read_level=spec.read_level,
            read_tile_px=spec.read_tile_px,
            tile_px=spec.tile_px,
            device=device,
            group_tiles=settings.batch_size,
        )
        log.info("%s: every read decoded on %s from the stored JPEG tiles", slide_path.name, device)
        return chunks, device_batches(iter(chunks), settings.batch_size), "gpu"
    loader = TileLoader(dataset, num_workers=settings.num_workers)
    on_cuda = device.type == "cuda"
    # on the CPU a batch is converted to a new tensor before the next is asked for: one buffer serves
    batches = rebatch(iter(loader), settings.batch_size, pin=on_cuda, reuse=not on_cuda)
    return loader, batches, _decoder_label(tiff_reads, len(jobs), settings.reader)


def _write_encoded(
    out_h5: str | Path,
    spec: TileSpec,
    encoded: Iterator[tuple[np.ndarray, np.ndarray]],
    *,
    dim: int,
    attrs: dict[str, object],
    label: str,
    cancelled: Callable[[], bool] | None,
) -> None:
    """Write the features file atomically, each batch's features in tile order as they come."""
    n = int(spec.coords.shape[0])
    with h5layout.features_writer(
        out_h5,
        n_tiles=n,
        dim=dim,
        coords=spec.coords,
        coords_attrs=spec.coords_attrs,
        extra=spec.extra,
        attrs=attrs,
    ) as features:
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


def _features_attrs(
    spec: TileSpec, encoder: Encoder, settings: ExtractSettings, *, precision: str, device: torch.device, decoder: str
) -> dict[str, object]:
    return h5layout.extraction_attrs(
        spec.attrs,
        encoder=encoder.name,
        dim=encoder.dim,
        input_px=encoder.input_px,
        weights_sha256=encoder.weights_sha256,
        weights_path=encoder.weights_path,
        precision=precision,
        device=str(device),
        n_tiles=int(spec.coords.shape[0]),
        stain_norm=settings.stain_norm,
        stain_target=settings.stain_target,
        tile_resize=TILE_RESIZE if spec.read_tile_px != spec.tile_px else "none",
        region_decoder=decoder,
    )


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
    tiles_reader = spec.attrs.get(h5layout.READER)
    if tiles_reader is not None and tiles_reader != settings.reader:
        log.warning(
            "tiles of %s were made with reader '%s', extracting with '%s'", slide_path, tiles_reader, settings.reader
        )
    info = check_slide(slide_path, spec, settings.reader, mpp)
    model = prepare_model(encoder, device, compile_model=settings.compile)
    loader, batches, decoder = _open_batches(slide_path, spec, info, settings, mpp=mpp, device=device)
    encoded = encode_batches(
        batches,
        encoder=encoder,
        model=model,
        device=device,
        precision=precision,
        pad_to=settings.batch_size if settings.compile else None,
    )
    n = int(spec.coords.shape[0])
    label = str(spec.attrs.get(h5layout.SLIDE_ID, slide_path.stem))
    attrs = _features_attrs(spec, encoder, settings, precision=precision, device=device, decoder=decoder)
    start = time.perf_counter()
    try:
        _write_encoded(out_h5, spec, encoded, dim=encoder.dim, attrs=attrs, label=label, cancelled=cancelled)
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

"""Tile transport: how fast tiles get from the loader workers into batches, and what it costs the main process.

Feature extraction reads tiles in ``DataLoader`` worker processes and assembles batches in the main
process, which also drives the GPU. Past a few thousand tiles a second the main process's share of
that handoff limits extraction. This benchmark runs histofuse's reads (shared 2,048-px regions,
JPEG tiles decoded by tifffile) on the synthetic slide of ``extract_throughput.py`` with no
encoder, and compares, in one run:

(a) ``dataloader``: the workers return their tiles through the ``DataLoader``'s queue (a fresh
    shared-memory segment per read, as PyTorch does by default);
(b) ``slots``: the workers cut tiles into shared-memory slots allocated once per slide and return
    the slot's number (:mod:`histofuse.features.tile_slots`, what extraction uses).

Both assemble batches with :func:`histofuse.features.tile_loader.rebatch` into one reused buffer (as
the pinned-memory allocator does on a GPU node). Figures: tiles/s, and the main process's CPU time
(user + system) per tile, which bounds what one main process can feed a GPU. One JSON line per
figure on stdout, then the ratios (b)/(a) for tiles/s and (a)/(b) for main-process CPU.

    python benchmarks/tile_transport.py --workers 15 --side 49152 --repeats 3   # a 16-core node
    python benchmarks/tile_transport.py --quick                                   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from extract_throughput import git_revision, prepare_slide, slide_dataset, versions  # noqa: E402
from histofuse.features.tile_loader import TileLoader, rebatch  # noqa: E402

log = logging.getLogger("tile_transport")

BENCHMARK = "tile_transport"
TRANSPORTS = ("dataloader", "slots")


def _main_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_transport(
    transport: str, slide: Path, tiles_h5: Path, *, workers: int, batch_size: int, region_px: int
) -> tuple[float, float]:
    """(tiles/s, main-process CPU µs per tile) of one pass over the slide's tiles (after a warm-up pass)."""
    loader = TileLoader(
        slide_dataset(slide, tiles_h5, region_px=region_px), num_workers=workers, shared_slots=transport == "slots"
    )
    expected = sum(len(job.indices) for job in loader.dataset.jobs)

    def one_pass() -> int:
        total = 0
        checksum = 0
        for indices, batch in rebatch(iter(loader), batch_size, pin=False, reuse=True):
            total += len(indices)
            checksum += int(batch[: len(indices), 0, 0, 0].sum())  # touch every batch, as a consumer would
        return total

    try:
        if one_pass() != expected:  # warm-up: workers started, files opened, pages mapped
            raise SystemExit(f"{transport}: a pass did not deliver all {expected} tiles")
        cpu0, start = _main_cpu_s(), time.perf_counter()
        done = one_pass()
        elapsed, cpu = time.perf_counter() - start, _main_cpu_s() - cpu0
    finally:
        loader.close()
    if done != expected:
        raise SystemExit(f"{transport}: a pass delivered {done} of {expected} tiles")
    return done / elapsed, cpu / done * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 4,096-px slide and 1 worker: a smoke run")
    parser.add_argument("--side", type=int, default=None, help="slide side in px (default 24576; quick 4096)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default cores - 1; quick 1)")
    parser.add_argument("--slide-mpp", type=float, default=0.5, help="the slide's resolution (0.25: a 40× slide)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--region-px", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="passes of each transport, alternating (median reported)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the slide here (reused when present)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")

    side = args.side or (4096 if args.quick else 24576)
    workers = args.workers if args.workers is not None else (1 if args.quick else max(1, (os.cpu_count() or 2) - 1))
    if workers < 1:
        raise SystemExit("--workers must be at least 1: the transports differ only between processes")
    repeats = 1 if args.quick else args.repeats

    with tempfile.TemporaryDirectory(prefix="histofuse-bench-") as scratch:
        slide, tiles_h5, n_tiles = prepare_slide(
            args.workdir or Path(scratch), side, max_tiles=None, slide_mpp=args.slide_mpp
        )
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in TRANSPORTS}
        for _ in range(repeats):  # alternate, so that drifts in machine load hit both alike
            for name in TRANSPORTS:
                runs[name].append(
                    run_transport(
                        name, slide, tiles_h5, workers=workers, batch_size=args.batch_size, region_px=args.region_px
                    )
                )
                log.info("%s: %.0f tiles/s, %.1f µs main-process CPU per tile", name, *runs[name][-1])

    common = {
        "benchmark": BENCHMARK,
        "workers": workers,
        "batch_size": args.batch_size,
        "region_px": args.region_px,
        "tiles": n_tiles,
        "slide_px": side,
        "slide_mpp": args.slide_mpp,
        "cpu_count": os.cpu_count(),
        "repeats": repeats,
        "quick": bool(args.quick),
        "git_revision": git_revision(),
        "versions": versions(),
    }
    rate = {name: statistics.median(r for r, _ in runs[name]) for name in TRANSPORTS}
    cpu = {name: statistics.median(c for _, c in runs[name]) for name in TRANSPORTS}
    lines = []
    for name in TRANSPORTS:
        lines.append({"figure": f"{name}_tiles_per_s", "unit": "tiles/s", "value": round(rate[name], 1),
                      "runs": [round(r, 1) for r, _ in runs[name]]})
        lines.append({"figure": f"{name}_main_cpu_us_per_tile", "unit": "µs/tile", "value": round(cpu[name], 1),
                      "runs": [round(c, 1) for _, c in runs[name]]})
    lines.append({"figure": "slots_over_dataloader_tiles_per_s", "unit": "ratio",
                  "value": round(rate["slots"] / rate["dataloader"], 3)})
    lines.append({"figure": "dataloader_over_slots_main_cpu", "unit": "ratio",
                  "value": round(cpu["dataloader"] / max(cpu["slots"], 1e-9), 3)})
    for line in lines:
        print(json.dumps({**common, **line}), flush=True)
    if not np.isfinite([line["value"] for line in lines]).all():
        raise SystemExit("a figure is not finite")


if __name__ == "__main__":
    main()

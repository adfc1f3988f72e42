"""``histofuse <stage> …``: thin command-line entry points called by the workflow's rules."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from histofuse import __version__
from histofuse.errors import HistofuseError

log = logging.getLogger("histofuse")

Handler = Callable[[argparse.Namespace], None]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def _optional_float(value: str) -> float | None:
    return None if value in ("", "nan", "None", "NA") else float(value)


def _optional_path(value: str) -> Path | None:
    return None if value in ("", "None") else Path(value)


def _limit_torch_threads(threads: int) -> None:
    """Keep torch's intra-op pool to the job's share of the cores (it defaults to all of them)."""
    import torch

    torch.set_num_threads(max(1, threads))


def cmd_demo(args: argparse.Namespace) -> None:
    from histofuse.demo import DemoSpec, make_demo_cohort

    spec = DemoSpec.reduced() if args.reduced else DemoSpec()
    if args.seed is not None:
        spec = type(spec)(**{**spec.__dict__, "seed": args.seed})
    written = make_demo_cohort(Path(args.out), spec)
    log.info("demo cohort written: %s", ", ".join(f"{k}={v}" for k, v in written.items()))


def cmd_tissue_mask(args: argparse.Namespace) -> None:
    from histofuse.slides.mask import MaskSettings, mask_slide
    from histofuse.slides.reader import open_slide

    settings = MaskSettings(method=args.method, mpp=args.mask_mpp)
    with open_slide(args.slide, reader=args.reader, mpp=args.mpp) as reader:
        mask_slide(reader, settings=settings, mask_png=args.mask, qc_png=args.qc)


def cmd_tile(args: argparse.Namespace) -> None:
    from histofuse.slides.mask import read_mask_png
    from histofuse.slides.reader import open_slide
    from histofuse.slides.tiling import TilingSettings, compute_tile_grid, write_tiles_h5

    settings = TilingSettings(
        mpp=args.tile_mpp,
        tile_px=args.tile_px,
        overlap_px=args.overlap_px,
        tissue_threshold=args.tissue_threshold,
    )
    with open_slide(args.slide, reader=args.reader, mpp=args.mpp) as reader:
        info = reader.info
    grid = compute_tile_grid(info, read_mask_png(args.mask), settings)
    write_tiles_h5(grid, args.out, slide_id=args.slide_id, reader=args.reader)


def cmd_extract(args: argparse.Namespace) -> None:
    from histofuse.features.encoders import build_encoder
    from histofuse.features.extract import ExtractSettings, extract_slide_features

    _limit_torch_threads(args.threads)
    encoder = build_encoder(args.encoder, weights=args.weights)
    settings = ExtractSettings(
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        precision=args.precision,
        reader=args.reader,
    )
    extract_slide_features(
        slide_path=args.slide,
        tiles_h5=args.tiles,
        out_h5=args.out,
        encoder=encoder,
        settings=settings,
        mpp=args.mpp,
    )


def cmd_prepare_tables(args: argparse.Namespace) -> None:
    from histofuse.tables import TableInputs, prepare_tables

    inputs = TableInputs(
        slides=args.slides,
        patients=args.patients,
        genomics=args.genomics,
        gene_groups=args.gene_groups,
        clinical=args.clinical,
        grade_classes=tuple(args.grade_classes),
    )
    prepare_tables(inputs, Path(args.out_dir))


def cmd_make_folds(args: argparse.Namespace) -> None:
    import pandas as pd

    from histofuse.folds import FoldSettings, make_folds, write_folds

    settings = FoldSettings(k=args.k, seed=args.seed, val_fraction=args.val_fraction)
    folds = make_folds(pd.read_parquet(args.patients), settings)
    write_folds(folds, Path(args.out))


def cmd_train(args: argparse.Namespace) -> None:
    from histofuse.training.settings import TrainSettings
    from histofuse.training.trainer import train_fold

    _limit_torch_threads(args.threads)
    settings = TrainSettings.from_mapping(json.loads(args.settings))
    train_fold(
        model_name=args.model,
        fold=args.fold,
        features_dir=Path(args.features_dir),
        tables_dir=Path(args.tables_dir),
        folds_tsv=Path(args.folds),
        settings=settings,
        out_checkpoint=Path(args.checkpoint),
        out_predictions=Path(args.predictions),
        out_history=_optional_path(args.history or ""),
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from histofuse.evaluate import run_evaluate

    run_evaluate(
        prediction_files=[Path(p) for p in args.predictions],
        out_folds=Path(args.out_folds),
        out_summary=Path(args.out_summary),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="histofuse", description=__doc__)
    parser.add_argument("--version", action="version", version=f"histofuse {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = add("demo", cmd_demo, "Write the synthetic demo cohort (slides, sheets, tables).")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--reduced", action="store_true", help="the small cohort used by the tests")
    p.add_argument("--seed", type=int, default=None)

    def slide_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--slide", required=True, type=Path, help="slide file")
        p.add_argument("--slide-id", default=None)
        p.add_argument("--mpp", type=_optional_float, default=None, help="level-0 µm/px, overrides metadata")
        p.add_argument("--reader", default="openslide", help="slide reader backend")

    p = add("tissue-mask", cmd_tissue_mask, "Tissue mask PNG and QC thumbnail of one slide.")
    slide_args(p)
    p.add_argument("--method", default="otsu", help="otsu | morphological")
    p.add_argument("--mask-mpp", type=float, default=8.0, help="resolution of the mask, µm/px")
    p.add_argument("--mask", required=True, type=Path, help="output mask PNG")
    p.add_argument("--qc", required=True, type=Path, help="output QC thumbnail PNG")

    p = add("tile", cmd_tile, "Tile coordinates of one slide at a target resolution, to HDF5.")
    slide_args(p)
    p.add_argument("--mask", required=True, type=Path, help="tissue mask PNG from tissue-mask")
    p.add_argument("--tile-mpp", type=float, default=0.5)
    p.add_argument("--tile-px", type=int, default=256)
    p.add_argument("--overlap-px", type=int, default=0)
    p.add_argument("--tissue-threshold", type=float, default=0.5)
    p.add_argument("--out", required=True, type=Path)

    p = add("extract", cmd_extract, "Tile features of one slide with an encoder, to HDF5.")
    slide_args(p)
    p.add_argument("--tiles", required=True, type=Path)
    p.add_argument("--encoder", required=True)
    p.add_argument("--weights", type=_optional_path, default=None, help="local weights file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    p.add_argument("--out", required=True, type=Path)

    p = add("prepare-tables", cmd_prepare_tables, "Check and type the cohort tables, to parquet.")
    p.add_argument("--patients", required=True, type=Path)
    p.add_argument("--slides", type=_optional_path, default=None)
    p.add_argument("--genomics", type=_optional_path, default=None)
    p.add_argument("--gene-groups", type=_optional_path, default=None)
    p.add_argument("--clinical", type=_optional_path, default=None)
    p.add_argument("--grade-classes", nargs="+", default=["2", "3", "4"])
    p.add_argument("--out-dir", required=True, type=Path)

    p = add("make-folds", cmd_make_folds, "Patient-level stratified cross-validation folds.")
    p.add_argument("--patients", required=True, type=Path, help="patients.parquet")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--out", required=True, type=Path)

    p = add("train", cmd_train, "Train one model on one fold; write checkpoint and predictions.")
    p.add_argument("--model", required=True)
    p.add_argument("--fold", required=True, type=int)
    p.add_argument("--features-dir", required=True)
    p.add_argument("--tables-dir", required=True)
    p.add_argument("--folds", required=True)
    p.add_argument("--settings", default="{}", help="JSON of the config's training section")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--history", default=None)
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch")

    p = add("evaluate", cmd_evaluate, "Metrics per model, task and fold, and their summary.")
    p.add_argument("--predictions", nargs="+", required=True)
    p.add_argument("--out-folds", required=True)
    p.add_argument("--out-summary", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        args.handler(args)
    except HistofuseError as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

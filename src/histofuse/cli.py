"""``histofuse <stage> …``: thin command-line entry points called by the workflow's rules."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


def _optional_int(value: str) -> int | None:
    return None if value in ("", "None", "null") else int(value)


def _optional_str(value: str) -> str | None:
    return None if value in ("", "None", "null") else value


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


def _limit_torch_threads(threads: int) -> None:
    """Keep torch's intra-op pool to the job's share of the cores (it defaults to all of them)."""
    import torch

    torch.set_num_threads(max(1, threads))


def cmd_demo(args: argparse.Namespace) -> None:
    from histofuse.demo import DemoSpec, make_demo_cohort
    from histofuse.demo_methods import make_methods_cohort, methods_spec

    seed = 0 if args.seed is None else args.seed
    if args.kind == "methods":
        written = make_methods_cohort(Path(args.out), methods_spec(reduced=args.reduced, seed=seed))
    else:
        spec = DemoSpec.reduced() if args.reduced else DemoSpec()
        written = make_demo_cohort(Path(args.out), dataclasses.replace(spec, seed=seed))
    log.info("demo cohort written: %s", ", ".join(f"{k}={v}" for k, v in written.items()))


def cmd_tissue_mask(args: argparse.Namespace) -> None:
    from histofuse.slides.mask import mask_slide
    from histofuse.slides.reader import open_slide

    with open_slide(args.slide, reader=args.reader, mpp=args.mpp) as reader:
        mask_slide(reader, settings=_mask_settings(args), mask_png=args.mask, qc_png=args.qc)


def _mask_settings(args: argparse.Namespace) -> Any:
    from histofuse.slides.mask import MaskSettings

    return MaskSettings(
        method=args.method,
        mpp=args.mask_mpp,
        background_filter=args.background_filter,
        max_background_grey=args.max_background_grey,
        min_saturation=args.min_saturation,
        min_tissue_um2=args.min_tissue_um2,
        pen_marks=tuple(args.pen_marks),
    )


def cmd_tile(args: argparse.Namespace) -> None:
    from histofuse.slides.job import TileJob, run_tile_job
    from histofuse.slides.tiling import TilingSettings

    settings = TilingSettings(
        mpp=args.tile_mpp,
        tile_px=args.tile_px,
        overlap_px=args.overlap_px,
        tissue_threshold=args.tissue_threshold,
        max_tiles=args.max_tiles,
        seed=args.seed,
    )
    job = TileJob(
        slide=args.slide,
        slide_id=args.slide_id or args.slide.stem,
        mpp=args.mpp,
        reader=args.reader,
        mask=args.mask,
        mask_qc=args.mask_qc,
        tiles=args.out,
        qc=args.qc,
    )
    run_tile_job(job, mask_settings=_mask_settings(args), settings=settings, on_error=args.on_error)


def cmd_extract(args: argparse.Namespace) -> None:
    from histofuse.features.extract_job import EncoderSpec, ExtractJob

    job = ExtractJob(
        slide=str(args.slide),
        slide_id=args.slide_id,
        tiles=str(args.tiles),
        out=str(args.out),
        mpp=args.mpp,
        on_error=args.on_error,
    )
    spec = EncoderSpec(
        encoder=args.encoder,
        weights=str(args.weights) if args.weights else None,
        threads=args.threads,
        settings={
            "batch_size": args.batch_size,
            "num_workers": args.num_workers,
            "device": args.device,
            "precision": args.precision,
            "reader": args.reader,
            "region_px": args.region_px,
            "region_decoder": args.region_decoder,
            "compile": args.compile,
            "stain_norm": args.stain_norm,
            "stain_target": args.stain_target,
        },
    )
    if args.server:
        from histofuse.features.server import absolute_paths, submit

        # the server may have been started from another folder: it gets no relative path
        outcome = submit(*absolute_paths(job, spec), idle_s=args.server_idle_s)
    else:
        from histofuse.features.encoders import build_encoder
        from histofuse.features.extract_job import run_extract_job

        _limit_torch_threads(args.threads)
        outcome = run_extract_job(
            job,
            encoder_name=args.encoder,
            encoder=lambda: build_encoder(args.encoder, weights=args.weights),
            settings=spec.extract_settings(),
        )
    log.info("%s: %s", args.slide_id or args.slide, outcome)


def cmd_import_features(args: argparse.Namespace) -> None:
    from histofuse.errors import SlideError
    from histofuse.exclusions import Exclusion, check_on_error, write_excluded_features
    from histofuse.features.precomputed import import_precomputed_features

    check_on_error(args.on_error)
    try:
        import_precomputed_features(
            folder=args.folder, slide_id=args.slide_id, encoder=args.encoder, out_h5=args.out
        )
    except SlideError as err:
        if args.on_error != "skip":
            raise
        exclusion = Exclusion.from_error(err, slide=args.slide_id, stage="import_features", file=args.folder)
        write_excluded_features(args.out, exclusion, encoder=args.encoder)


def cmd_exclusions(args: argparse.Namespace) -> None:
    from histofuse.exclusions import collect_exclusions

    collect_exclusions(args.features, args.out, encoder=args.encoder)


def cmd_prepare_tables(args: argparse.Namespace) -> None:
    import json

    from histofuse.tables import prepare_cohort_tables

    prepare_cohort_tables(
        cohort_format=args.format,
        format_options=json.loads(args.format_options),
        slides=args.slides,
        patients=args.patients,
        genomics=args.genomics,
        gene_groups=args.gene_groups,
        clinical=args.clinical,
        grade_classes=tuple(args.grade_classes),
        modalities=tuple(args.modalities),
        out_dir=Path(args.out_dir),
    )


def cmd_preprocess(args: argparse.Namespace) -> None:
    import json

    import pandas as pd

    from histofuse.io import write_text_atomic
    from histofuse.preprocess import PreprocessSettings, fit_fold_preprocessing
    from histofuse.training.data import read_fold

    tables = Path(args.tables_dir)
    fitted = fit_fold_preprocessing(
        fold=args.fold,
        fold_rows=read_fold(args.folds, args.fold),
        genomics=pd.read_parquet(tables / "genomics.parquet"),
        clinical=pd.read_parquet(tables / "clinical.parquet"),
        gene_groups=pd.read_parquet(tables / "gene_groups.parquet"),
        settings=PreprocessSettings.from_mapping(json.loads(args.settings)),
    )
    write_text_atomic(Path(args.out), fitted.to_json())


def cmd_make_folds(args: argparse.Namespace) -> None:
    from histofuse.folds import FoldSettings, folds_for_tables, write_folds

    settings = FoldSettings(
        k=args.k, seed=args.seed, val_fraction=args.val_fraction, source=args.source, stratify=args.stratify
    )
    import json

    folds = folds_for_tables(
        Path(args.patients),
        settings,
        tasks=tuple(args.tasks),
        binary_label=args.binary_label,
        cohort_splits=None if args.cohort_splits is None else Path(args.cohort_splits),
        split_files=json.loads(args.split_files) if args.split_files else None,
    )
    write_folds(folds, Path(args.out))


def cmd_train(args: argparse.Namespace) -> None:
    from histofuse.training.cox import COX_MODELS, CoxFeatureSettings, CoxSettings, train_cox_fold
    from histofuse.training.settings import TrainSettings
    from histofuse.training.trainer import train_fold

    _limit_torch_threads(args.threads)
    if args.model in COX_MODELS:
        train_cox_fold(
            model_name=args.model,
            fold=args.fold,
            tables_dir=Path(args.tables_dir),
            folds_tsv=Path(args.folds),
            settings=(
                CoxFeatureSettings.from_mapping(json.loads(args.cox_settings))
                if args.model == "cox_genomic"
                else CoxSettings.from_mapping(json.loads(args.cox_settings))
            ),
            out_checkpoint=Path(args.checkpoint),
            out_predictions=Path(args.predictions),
            out_history=_optional_path(args.history or ""),
            preprocessing=_optional_path(args.preprocessing or ""),
        )
        return
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
        preprocessing=_optional_path(args.preprocessing or ""),
        use_wsi=not args.no_wsi,
        state=_optional_path(args.state or ""),
    )


def cmd_missing_rate(args: argparse.Namespace) -> None:
    from histofuse.training.missing_rate import missing_rate_fold

    _limit_torch_threads(args.threads)
    missing_rate_fold(
        checkpoint=Path(args.checkpoint),
        fold=args.fold,
        features_dir=Path(args.features_dir),
        tables_dir=Path(args.tables_dir),
        folds_tsv=Path(args.folds),
        preprocessing=Path(args.preprocessing),
        rates=args.rates,
        seed=args.seed,
        out=Path(args.out),
        use_wsi=not args.no_wsi,
    )


def cmd_missing_rate_table(args: argparse.Namespace) -> None:
    from histofuse.training.missing_rate import aggregate_missing_rates

    aggregate_missing_rates([Path(p) for p in args.tables], Path(args.out))


def cmd_modality_ablation(args: argparse.Namespace) -> None:
    from histofuse.training.ablation import ablation_fold

    _limit_torch_threads(args.threads)
    ablation_fold(
        checkpoint=Path(args.checkpoint),
        fold=args.fold,
        features_dir=Path(args.features_dir),
        tables_dir=Path(args.tables_dir),
        folds_tsv=Path(args.folds),
        preprocessing=Path(args.preprocessing),
        repeats=args.repeats,
        seed=args.seed,
        out=Path(args.out),
        use_wsi=not args.no_wsi,
    )


def cmd_modality_ablation_table(args: argparse.Namespace) -> None:
    from histofuse.modality_ablation import ablation_table

    table = ablation_table([Path(p) for p in args.tables], n_boot=args.bootstrap, seed=args.seed, out=Path(args.out))
    if args.figure:
        from histofuse.report.figures import modality_ablation_figure
        from histofuse.report.plots import save_figure

        save_figure(modality_ablation_figure(table), Path(args.figure))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from histofuse.evaluate import EvaluationSettings, run_evaluate

    run_evaluate(
        prediction_files=[Path(p) for p in args.predictions],
        out_folds=Path(args.out_folds),
        out_summary=Path(args.out_summary),
        out_comparison=_optional_path(args.out_comparison or ""),
        out_confusion=_optional_path(args.out_confusion or ""),
        settings=EvaluationSettings(n_boot=args.bootstrap, seed=args.seed),
    )


def cmd_attention(args: argparse.Namespace) -> None:
    from histofuse.report.attention import write_attention_png

    checkpoints = {}
    for raw in args.checkpoints:
        path = Path(raw)
        if not path.stem.startswith("fold") or not path.stem[4:].isdigit():
            raise HistofuseError("checkpoint name does not say the fold", path=path)
        checkpoints[int(path.stem[4:])] = path
    write_attention_png(
        slide_id=args.slide_id,
        slide_path=Path(args.slide),
        features_h5=Path(args.features),
        checkpoints=checkpoints,
        slides_table=Path(args.slides_table),
        folds_tsv=Path(args.folds),
        out_png=Path(args.out),
        reader=args.reader,
        mpp=float(args.mpp) if args.mpp else None,
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
    p.add_argument(
        "--kind",
        choices=("default", "methods"),
        default="default",
        help="default: the demo cohort; methods: slides, genomics and clinical data complementary "
        "(README, 'The demo cohort')",
    )
    p.add_argument("--seed", type=int, default=None)

    def slide_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--slide", required=True, type=Path, help="slide file")
        p.add_argument("--slide-id", default=None)
        p.add_argument("--mpp", type=_optional_float, default=None, help="level-0 µm/px, overrides metadata")
        p.add_argument("--reader", default="openslide", help="slide reader backend")
        p.add_argument(
            "--on-error", default="stop", help="stop, or skip: a slide that fails is recorded as excluded"
        )

    def mask_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--method", default="otsu", help="otsu | morphological")
        p.add_argument("--mask-mpp", type=float, default=8.0, help="resolution of the mask, µm/px")
        p.add_argument("--background-filter", type=_bool, default=True, help="blank-background filter: true | false")
        p.add_argument("--max-background-grey", type=int, default=220, help="brighter pixels are background")
        p.add_argument("--min-saturation", type=int, default=12, help="greyer pixels (RGB spread) are background")
        p.add_argument("--min-tissue-um2", type=float, default=100.0, help="smaller tissue regions are debris")
        p.add_argument("--pen-marks", nargs="*", default=[], help="ink colours to remove: blue green red black")

    p = add("tissue-mask", cmd_tissue_mask, "Tissue mask PNG and QC thumbnail of one slide.")
    slide_args(p)
    mask_args(p)
    p.add_argument("--mask", required=True, type=Path, help="output mask PNG")
    p.add_argument("--qc", required=True, type=Path, help="output QC thumbnail PNG")

    p = add("tile", cmd_tile, "Tissue mask and tile coordinates of one slide at a target resolution.")
    slide_args(p)
    mask_args(p)
    p.add_argument("--tile-mpp", type=float, default=0.5)
    p.add_argument("--tile-px", type=int, default=256)
    p.add_argument("--overlap-px", type=int, default=0)
    p.add_argument("--tissue-threshold", type=float, default=0.5)
    p.add_argument("--max-tiles", type=_optional_int, default=None, help="cap on tiles per slide (empty: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling under --max-tiles")
    p.add_argument("--mask", required=True, type=Path, help="output mask PNG")
    p.add_argument("--mask-qc", required=True, type=Path, help="output PNG: thumbnail with the mask outline")
    p.add_argument("--out", required=True, type=Path, help="output tiles HDF5")
    p.add_argument("--qc", required=True, type=Path, help="output PNG: thumbnail with the tile grid")

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
    p.add_argument("--region-px", type=int, default=2048, help="side of shared region reads (0: per tile)")
    p.add_argument(
        "--region-decoder",
        default="auto",
        choices=("auto", "reader", "tifffile", "gpu"),
        help="who decodes the reads: the GPU (auto on CUDA) or tifffile for tiled JPEG TIFF levels, "
        "the slide reader, tifffile only, or the GPU only",
    )
    p.add_argument("--compile", type=_bool, default=False, help="torch.compile the encoder: true | false")
    p.add_argument("--stain-norm", type=_optional_str, default=None, help="macenko, or empty for none")
    p.add_argument("--stain-target", type=_optional_str, default=None, help="target image of the stain norm")
    p.add_argument(
        "--server",
        type=_bool,
        default=False,
        help="true: hand the slide to the extraction server of these settings (started when none runs), "
        "which pays the encoder's start-up once for many slides",
    )
    p.add_argument("--server-idle-s", type=float, default=60.0, help="an idle server exits after this many seconds")
    p.add_argument("--out", required=True, type=Path)

    p = add("import-features", cmd_import_features, "Import one slide's precomputed CLAM/TRIDENT features.")
    p.add_argument("--folder", required=True, type=Path, help="features.precomputed_dir")
    p.add_argument("--slide-id", required=True)
    p.add_argument("--encoder", required=True, help="features.encoder (TRIDENT: the features_<encoder> folder)")
    p.add_argument("--on-error", default="stop", help="stop, or skip: a slide that fails is recorded as excluded")
    p.add_argument("--out", required=True, type=Path)

    p = add("exclusions", cmd_exclusions, "List the excluded slides; check every other slide's encoder.")
    p.add_argument("--features", nargs="*", default=[], type=Path, help="every slide's features file")
    p.add_argument("--encoder", required=True, help="features.encoder")
    p.add_argument("--out", required=True, type=Path, help="output exclusions.tsv")

    p = add("prepare-tables", cmd_prepare_tables, "Check and type the cohort tables, to parquet.")
    p.add_argument("--format", default="histofuse", help="cohort.format: histofuse or a published format")
    p.add_argument("--format-options", default="{}", help="cohort options as JSON (files of the format)")
    p.add_argument("--modalities", nargs="+", default=["wsi", "genomics", "clinical"])
    p.add_argument("--patients", type=_optional_path, default=None)
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
    p.add_argument("--source", default="kfold", help="kfold, cohort (the format's split files) or files (folds.files)")
    p.add_argument("--stratify", default="grade", help="label column stratified on, with the event")
    p.add_argument("--cohort-splits", type=Path, default=None, help="cohort_splits.tsv (source cohort)")
    p.add_argument("--split-files", default="{}", help="folds.files as JSON (source files)")
    p.add_argument("--tasks", nargs="*", default=[], help="training.tasks: each needs labels in every fold")
    p.add_argument("--binary-label", default="aln", help="training.binary_label: the binary task's column")
    p.add_argument("--out", required=True, type=Path)

    p = add("preprocess", cmd_preprocess, "Fit one fold's table preprocessing on its training part.")
    p.add_argument("--tables-dir", required=True, type=Path)
    p.add_argument("--folds", required=True, type=Path)
    p.add_argument("--fold", required=True, type=int)
    p.add_argument("--settings", default="{}", help="preprocessing section as JSON")
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
    p.add_argument("--preprocessing", default=None, help="the fold's fitted preprocessing (JSON)")
    p.add_argument("--no-wsi", action="store_true", help="train without slides (no 'wsi' modality)")
    p.add_argument("--cox-settings", default="{}", help="JSON of the config's training.cox section")
    p.add_argument("--state", default=None, help="resumable last-epoch state (written each epoch)")

    p = add("missing-rate", cmd_missing_rate, "Test AUC of one trained model with clinical data withheld at each rate.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--fold", required=True, type=int)
    p.add_argument("--features-dir", required=True)
    p.add_argument("--tables-dir", required=True)
    p.add_argument("--folds", required=True)
    p.add_argument("--preprocessing", required=True, help="the fold's fitted preprocessing (JSON)")
    p.add_argument("--rates", nargs="+", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    p.add_argument("--no-wsi", action="store_true", help="no slides in this cohort")

    p = add("missing-rate-table", cmd_missing_rate_table, "Gather the per-fold missing-rate tables into one.")
    p.add_argument("--tables", nargs="+", required=True)
    p.add_argument("--out", required=True)

    p = add(
        "modality-ablation",
        cmd_modality_ablation,
        "Test predictions of one trained model with each modality permuted across the test patients.",
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--fold", required=True, type=int)
    p.add_argument("--features-dir", required=True)
    p.add_argument("--tables-dir", required=True)
    p.add_argument("--folds", required=True)
    p.add_argument("--preprocessing", required=True, help="the fold's fitted preprocessing (JSON)")
    p.add_argument("--repeats", type=int, required=True, help="permutations per modality")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="predictions (parquet)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    p.add_argument("--no-wsi", action="store_true", help="no slides in this cohort")

    p = add(
        "modality-ablation-table",
        cmd_modality_ablation_table,
        "Metric drop per model, task and permuted modality, with bootstrap intervals.",
    )
    p.add_argument("--tables", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--figure", default=None, help="the drops as a PNG figure, a panel per task")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (0 = none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")

    p = add("evaluate", cmd_evaluate, "Metrics per model, task and fold, and their summary.")
    p.add_argument("--predictions", nargs="+", required=True)
    p.add_argument("--out-folds", required=True)
    p.add_argument("--out-summary", required=True)
    p.add_argument("--out-comparison", default=None, help="paired model comparison (TSV)")
    p.add_argument("--out-confusion", default=None, help="confusion counts per fold (TSV)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (0 = none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")

    p = add("attention", cmd_attention, "Tile-attention heatmap of one slide (abmil checkpoints).")
    p.add_argument("--slide-id", required=True)
    p.add_argument("--slide", required=True, help="the slide file")
    p.add_argument("--features", required=True, help="the slide's features .h5")
    p.add_argument("--checkpoints", nargs="+", required=True, help="abmil fold{k}.pt of every fold")
    p.add_argument("--slides-table", required=True, help="tables/slides.parquet")
    p.add_argument("--folds", required=True, help="folds/folds.tsv")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--reader", default="openslide")
    p.add_argument("--mpp", default="", help="µm/px overriding the slide's metadata")
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

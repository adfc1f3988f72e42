"""``histofuse <stage> …``: thin command-line entry points called by the workflow's rules.

Settings that the configuration holds reach a stage as ``--settings`` JSON (the resolved sections
it reads) or as single options; both, their help and their defaults come from
:mod:`histofuse.configuration` (:mod:`histofuse.cli_settings`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from histofuse import __version__
from histofuse.cli_settings import SettingsGroup, add_settings, settings_from_args
from histofuse.configuration import (
    EvaluationConfig,
    FeaturesConfig,
    FoldsConfig,
    HistofuseConfig,
    MissingRateConfig,
    PreprocessingConfig,
    TilingConfig,
    TissueMaskConfig,
    TrainingRunConfig,
)
from histofuse.errors import HistofuseError

log = logging.getLogger("histofuse")

Handler = Callable[[argparse.Namespace], None]

MASK = SettingsGroup("tissue_mask", TissueMaskConfig, flags={"mpp": "--mask-mpp"})
TILING = SettingsGroup("tiling", TilingConfig, flags={"mpp": "--tile-mpp"})
FEATURES = SettingsGroup(
    "features",
    FeaturesConfig,
    keys=tuple(key for key in FeaturesConfig.model_fields if key not in ("source", "precomputed_dir")),
    cli_defaults={"server": False},
)
FOLDS = SettingsGroup("folds", FoldsConfig)
PREPROCESSING = SettingsGroup("preprocessing", PreprocessingConfig)
TRAINING = SettingsGroup("training", TrainingRunConfig)
BOOTSTRAP = SettingsGroup("evaluation", EvaluationConfig, keys=("bootstrap", "seed"))
ABLATION = SettingsGroup("evaluation", EvaluationConfig, keys=("ablation_repeats", "seed"), flags={"ablation_repeats": "--repeats"})
MISSING_RATE = SettingsGroup("missing_rate", MissingRateConfig, keys=("rates", "seed"))


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
    from histofuse.demo_methods import make_methods_cohort, methods_spec

    seed = 0 if args.seed is None else args.seed
    if args.kind == "methods":
        written = make_methods_cohort(Path(args.out), methods_spec(reduced=args.reduced, seed=seed))
    else:
        spec = DemoSpec.reduced() if args.reduced else DemoSpec()
        written = make_demo_cohort(Path(args.out), dataclasses.replace(spec, seed=seed))
    log.info("demo cohort written: %s", ", ".join(f"{k}={v}" for k, v in written.items()))


def cmd_tile(args: argparse.Namespace) -> None:
    from histofuse.slides.job import TileJob, run_tile_job
    from histofuse.slides.mask import MaskSettings
    from histofuse.slides.tiling import TilingSettings

    sections = settings_from_args(args, (MASK, TILING))
    mask = sections["tissue_mask"].model_dump()
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
    run_tile_job(
        job,
        mask_settings=MaskSettings(**{**mask, "pen_marks": tuple(mask["pen_marks"])}),
        settings=TilingSettings(**sections["tiling"].model_dump()),
        on_error=args.on_error,
    )


def cmd_extract(args: argparse.Namespace) -> None:
    from histofuse.features.extract_job import EncoderSpec, ExtractJob

    features = typing.cast(FeaturesConfig, settings_from_args(args, (FEATURES,))["features"])
    encoder = features.encoder
    job = ExtractJob(
        slide=str(args.slide),
        slide_id=args.slide_id,
        tiles=str(args.tiles),
        out=str(args.out),
        mpp=args.mpp,
        on_error=args.on_error,
    )
    extract_keys = ("batch_size", "num_workers", "device", "precision", "region_px", "region_decoder", "compile")
    spec = EncoderSpec(
        encoder=encoder,
        weights=features.weights or None,
        threads=args.threads,
        settings={
            **{key: getattr(features, key) for key in extract_keys},
            "reader": args.reader,
            "stain_norm": features.stain_norm,
            "stain_target": features.stain_target or None,
        },
    )
    if features.server:
        from histofuse.features.server import absolute_paths, submit

        # the server may have been started from another folder: it gets no relative path
        outcome = submit(*absolute_paths(job, spec), idle_s=features.server_idle_s)
    else:
        from histofuse.features.encoders import build_encoder
        from histofuse.features.extract_job import run_extract_job

        _limit_torch_threads(args.threads)
        outcome = run_extract_job(
            job,
            encoder_name=encoder,
            encoder=lambda: build_encoder(encoder, weights=spec.weights),
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
    import pandas as pd

    from histofuse.io import write_text_atomic
    from histofuse.preprocess import PreprocessSettings, fit_fold_preprocessing
    from histofuse.training.data import read_fold

    section = settings_from_args(args, (PREPROCESSING,))["preprocessing"]
    tables = Path(args.tables_dir)
    fitted = fit_fold_preprocessing(
        fold=args.fold,
        fold_rows=read_fold(args.folds, args.fold),
        genomics=pd.read_parquet(tables / "genomics.parquet"),
        clinical=pd.read_parquet(tables / "clinical.parquet"),
        gene_groups=pd.read_parquet(tables / "gene_groups.parquet"),
        settings=PreprocessSettings.from_mapping(section.model_dump()),
    )
    write_text_atomic(Path(args.out), fitted.to_json())


def cmd_make_folds(args: argparse.Namespace) -> None:
    from histofuse.folds import FoldSettings, folds_for_tables, write_folds

    folds = typing.cast(FoldsConfig, settings_from_args(args, (FOLDS,))["folds"])
    settings = FoldSettings(
        k=folds.k, seed=folds.seed, val_fraction=folds.val_fraction, source=folds.source, stratify=folds.stratify
    )
    written = folds_for_tables(
        Path(args.patients),
        settings,
        tasks=tuple(args.tasks),
        binary_label=args.binary_label,
        cohort_splits=None if args.cohort_splits is None else Path(args.cohort_splits),
        split_files={str(key): path for key, path in folds.files.items()} if folds.source == "files" and folds.files else None,
    )
    write_folds(written, Path(args.out))


def cmd_train(args: argparse.Namespace) -> None:
    from histofuse.training.cox import COX_MODELS, CoxFeatureSettings, CoxSettings, train_cox_fold
    from histofuse.training.settings import TrainSettings
    from histofuse.training.trainer import train_fold

    _limit_torch_threads(args.threads)
    outputs: dict[str, Any] = {
        "out_checkpoint": Path(args.checkpoint),
        "out_predictions": Path(args.predictions),
        "out_history": _optional_path(args.history or ""),
        "preprocessing": _optional_path(args.preprocessing or ""),
    }
    if args.model in COX_MODELS:
        cox_type = CoxFeatureSettings if args.model == "cox_genomic" else CoxSettings
        train_cox_fold(
            model_name=args.model,
            fold=args.fold,
            tables_dir=Path(args.tables_dir),
            folds_tsv=Path(args.folds),
            settings=cox_type.from_mapping(json.loads(args.cox_settings)),
            **outputs,
        )
        return
    section = settings_from_args(args, (TRAINING,))["training"]
    train_fold(
        model_name=args.model,
        fold=args.fold,
        features_dir=Path(args.features_dir),
        tables_dir=Path(args.tables_dir),
        folds_tsv=Path(args.folds),
        settings=TrainSettings.from_mapping(section.model_dump()),
        use_wsi=not args.no_wsi,
        state=_optional_path(args.state or ""),
        **outputs,
    )


def cmd_missing_rate(args: argparse.Namespace) -> None:
    from histofuse.training.missing_rate import missing_rate_fold

    section = typing.cast(MissingRateConfig, settings_from_args(args, (MISSING_RATE,))["missing_rate"])
    _limit_torch_threads(args.threads)
    missing_rate_fold(
        checkpoint=Path(args.checkpoint),
        fold=args.fold,
        features_dir=Path(args.features_dir),
        tables_dir=Path(args.tables_dir),
        folds_tsv=Path(args.folds),
        preprocessing=Path(args.preprocessing),
        rates=list(section.rates),
        seed=section.seed,
        out=Path(args.out),
        use_wsi=not args.no_wsi,
    )


def cmd_missing_rate_table(args: argparse.Namespace) -> None:
    from histofuse.training.missing_rate import aggregate_missing_rates

    aggregate_missing_rates([Path(p) for p in args.tables], Path(args.out))


def cmd_modality_ablation(args: argparse.Namespace) -> None:
    from histofuse.training.ablation import ablation_fold

    section = typing.cast(EvaluationConfig, settings_from_args(args, (ABLATION,))["evaluation"])
    _limit_torch_threads(args.threads)
    ablation_fold(
        checkpoint=Path(args.checkpoint),
        fold=args.fold,
        features_dir=Path(args.features_dir),
        tables_dir=Path(args.tables_dir),
        folds_tsv=Path(args.folds),
        preprocessing=Path(args.preprocessing),
        repeats=section.ablation_repeats,
        seed=section.seed,
        out=Path(args.out),
        use_wsi=not args.no_wsi,
    )


def cmd_modality_ablation_table(args: argparse.Namespace) -> None:
    from histofuse.modality_ablation import ablation_table

    section = typing.cast(EvaluationConfig, settings_from_args(args, (BOOTSTRAP,))["evaluation"])
    tables = [Path(p) for p in args.tables]
    table = ablation_table(tables, n_boot=section.bootstrap, seed=section.seed, out=Path(args.out))
    if args.figure:
        from histofuse.report.figures import modality_ablation_figure
        from histofuse.report.plots import save_figure

        save_figure(modality_ablation_figure(table), Path(args.figure))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from histofuse.evaluate import EvaluationSettings, run_evaluate

    section = typing.cast(EvaluationConfig, settings_from_args(args, (BOOTSTRAP,))["evaluation"])
    run_evaluate(
        prediction_files=[Path(p) for p in args.predictions],
        out_folds=Path(args.out_folds),
        out_summary=Path(args.out_summary),
        out_comparison=_optional_path(args.out_comparison or ""),
        out_confusion=_optional_path(args.out_confusion or ""),
        settings=EvaluationSettings(n_boot=section.bootstrap, seed=section.seed),
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


# --------------------------------------------------------------------------- parsers, one per command


def _config_option(parser: argparse.ArgumentParser, key: str) -> None:
    """An option for a top-level configuration key (reader, on_error): its choices, default and help."""
    info = HistofuseConfig.model_fields[key]
    parser.add_argument(
        "--" + key.replace("_", "-"),
        default=info.default,
        choices=typing.get_args(info.annotation) or None,
        help=f"{info.description}; config key {key}, default {info.default}",
    )


def _slide_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slide", required=True, type=Path, help="slide file")
    p.add_argument("--slide-id", default=None, help="the slide's id (default: the file name)")
    p.add_argument("--mpp", type=_optional_float, default=None, help="level-0 µm/px, overrides metadata")
    _config_option(p, "reader")
    _config_option(p, "on_error")


def _fold_input_options(p: argparse.ArgumentParser) -> None:
    """The inputs of the per-fold commands that read a trained model."""
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--fold", required=True, type=int)
    p.add_argument("--features-dir", required=True)
    p.add_argument("--tables-dir", required=True)
    p.add_argument("--folds", required=True)
    p.add_argument("--preprocessing", required=True, help="the fold's fitted preprocessing (JSON)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    p.add_argument("--no-wsi", action="store_true", help="no slides in this cohort")


def _parser_demo(add: Callable[..., argparse.ArgumentParser]) -> None:
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
    p.add_argument("--seed", type=int, default=None, help="seed of the cohort (default 0)")


def _parser_slides(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("tile", cmd_tile, "Tissue mask and tile coordinates of one slide at a target resolution.")
    _slide_options(p)
    p.add_argument("--mask", required=True, type=Path, help="output mask PNG")
    p.add_argument("--mask-qc", required=True, type=Path, help="output PNG: thumbnail with the mask outline")
    p.add_argument("--out", required=True, type=Path, help="output tiles HDF5")
    p.add_argument("--qc", required=True, type=Path, help="output PNG: thumbnail with the tile grid")
    add_settings(p, (MASK, TILING))

    p = add("extract", cmd_extract, "Tile features of one slide with an encoder, to HDF5.")
    _slide_options(p)
    p.add_argument("--tiles", required=True, type=Path, help="the slide's tiles HDF5")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    p.add_argument("--out", required=True, type=Path, help="output features HDF5")
    add_settings(p, (FEATURES,))

    p = add("import-features", cmd_import_features, "Import one slide's precomputed CLAM/TRIDENT features.")
    p.add_argument("--folder", required=True, type=Path, help="features.precomputed_dir")
    p.add_argument("--slide-id", required=True, help="the slide's id (its file name in the folder)")
    p.add_argument("--encoder", required=True, help="features.encoder (TRIDENT: the features_<encoder> folder)")
    _config_option(p, "on_error")
    p.add_argument("--out", required=True, type=Path, help="output features HDF5")


def _parser_tables(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("prepare-tables", cmd_prepare_tables, "Check and type the cohort tables, to parquet.")
    p.add_argument("--format", default="histofuse", help="cohort.format: histofuse or a published format")
    p.add_argument("--format-options", default="{}", help="cohort options as JSON (files of the format)")
    modalities = HistofuseConfig.model_fields["modalities"]
    p.add_argument("--modalities", nargs="+", default=modalities.default, help=modalities.description)
    for sheet in ("patients", "slides", "genomics", "gene-groups", "clinical"):
        p.add_argument(f"--{sheet}", type=_optional_path, default=None, help=f"the {sheet} sheet or table")
    classes = HistofuseConfig.model_fields["labels"].default.grade_classes
    p.add_argument("--grade-classes", nargs="+", default=classes, help="labels.grade_classes")
    p.add_argument("--out-dir", required=True, type=Path, help="output folder of the tables")

    p = add("make-folds", cmd_make_folds, "Patient-level stratified cross-validation folds.")
    p.add_argument("--patients", required=True, type=Path, help="patients.parquet")
    p.add_argument("--cohort-splits", type=Path, default=None, help="cohort_splits.tsv (source cohort)")
    p.add_argument("--tasks", nargs="*", default=[], help="training.tasks: each needs labels in every fold")
    p.add_argument("--binary-label", default="aln", help="training.binary_label: the binary task's column")
    p.add_argument("--out", required=True, type=Path, help="output folds.tsv")
    add_settings(p, (FOLDS,))

    p = add("preprocess", cmd_preprocess, "Fit one fold's table preprocessing on its training part.")
    p.add_argument("--tables-dir", required=True, type=Path)
    p.add_argument("--folds", required=True, type=Path)
    p.add_argument("--fold", required=True, type=int)
    p.add_argument("--out", required=True, type=Path, help="output fitted preprocessing (JSON)")
    add_settings(p, (PREPROCESSING,))


def _parser_train(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("train", cmd_train, "Train one model on one fold; write checkpoint and predictions.")
    p.add_argument("--model", required=True, help="registry name of the model")
    p.add_argument("--fold", required=True, type=int)
    p.add_argument("--features-dir", required=True, help="folder of the slides' features files")
    p.add_argument("--tables-dir", required=True)
    p.add_argument("--folds", required=True, help="folds.tsv")
    p.add_argument("--checkpoint", required=True, help="output checkpoint")
    p.add_argument("--predictions", required=True, help="output predictions (parquet)")
    p.add_argument("--history", default=None, help="output training history (TSV)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    p.add_argument("--preprocessing", default=None, help="the fold's fitted preprocessing (JSON)")
    p.add_argument("--no-wsi", action="store_true", help="train without slides (no 'wsi' modality)")
    p.add_argument("--cox-settings", default="{}", help="JSON of the config's training.cox section")
    p.add_argument("--state", default=None, help="resumable last-epoch state (written each epoch)")
    add_settings(p, (TRAINING,))


def _parser_evaluation(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("missing-rate", cmd_missing_rate, "Test AUC of one trained model with clinical data withheld at each rate.")
    _fold_input_options(p)
    p.add_argument("--out", required=True, help="output table (TSV)")
    add_settings(p, (MISSING_RATE,))

    p = add("missing-rate-table", cmd_missing_rate_table, "Gather the per-fold missing-rate tables into one.")
    p.add_argument("--tables", nargs="+", required=True)
    p.add_argument("--out", required=True)

    p = add(
        "modality-ablation",
        cmd_modality_ablation,
        "Test predictions of one trained model with each modality permuted across the test patients.",
    )
    _fold_input_options(p)
    p.add_argument("--out", required=True, help="predictions (parquet)")
    add_settings(p, (ABLATION,))

    p = add(
        "modality-ablation-table",
        cmd_modality_ablation_table,
        "Metric drop per model, task and permuted modality, with bootstrap intervals.",
    )
    p.add_argument("--tables", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--figure", default=None, help="the drops as a PNG figure, a panel per task")
    add_settings(p, (BOOTSTRAP,))

    p = add("evaluate", cmd_evaluate, "Metrics per model, task and fold, and their summary.")
    p.add_argument("--predictions", nargs="+", required=True)
    p.add_argument("--out-folds", required=True)
    p.add_argument("--out-summary", required=True)
    p.add_argument("--out-comparison", default=None, help="paired model comparison (TSV)")
    p.add_argument("--out-confusion", default=None, help="confusion counts per fold (TSV)")
    add_settings(p, (BOOTSTRAP,))


def _parser_attention(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("attention", cmd_attention, "Tile-attention heatmap of one slide (abmil checkpoints).")
    p.add_argument("--slide-id", required=True)
    p.add_argument("--slide", required=True, help="the slide file")
    p.add_argument("--features", required=True, help="the slide's features .h5")
    p.add_argument("--checkpoints", nargs="+", required=True, help="abmil fold{k}.pt of every fold")
    p.add_argument("--slides-table", required=True, help="tables/slides.parquet")
    p.add_argument("--folds", required=True, help="folds/folds.tsv")
    p.add_argument("--out", required=True, help="PNG to write")
    _config_option(p, "reader")
    p.add_argument("--mpp", default="", help="µm/px overriding the slide's metadata")


def build_parser() -> argparse.ArgumentParser:
    """The ``histofuse`` parser: one sub-command per stage."""
    parser = argparse.ArgumentParser(prog="histofuse", description=__doc__)
    parser.add_argument("--version", action="version", version=f"histofuse {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    for add_parsers in (_parser_demo, _parser_slides, _parser_tables, _parser_train, _parser_evaluation, _parser_attention):
        add_parsers(add)
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

"""Every stage's settings built from the configuration once, when Snakemake builds the DAG.

The per-slide and per-fold jobs build the same settings objects from their command lines; a value
those objects refuse (an overlap as large as the tile, a stain normalisation without its target
image…) would otherwise fail once per job, in job logs. Here it stops the run before any job, with
the configuration file named. Files the settings name (stain target, precomputed folder) must exist.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from histofuse.errors import ConfigError

_T = TypeVar("_T")


def _built(make: Callable[[], _T], *, source: str) -> _T:
    """``make()``, with the configuration file named in a ConfigError it raises."""
    try:
        return make()
    except ConfigError as err:
        raise ConfigError(err.problem, path=source, column=err.column, fix=err.fix) from err


def _existing(value: str | None, *, key: str, source: str, folder: bool = False) -> None:
    if not value:
        return
    path = Path(value)
    if not (path.is_dir() if folder else path.is_file()):
        kind = "folder" if folder else "file"
        raise ConfigError(
            f"{key} names a {kind} that does not exist: {value}.",
            path=source,
            column=key,
            fix=f"correct {key} (relative paths are read from the folder Snakemake runs in).",
        )


def check_slide_settings(config: Mapping[str, Any], *, source: str) -> None:
    """The tissue mask, tiling and feature settings (only those the run uses)."""
    from histofuse.slides.mask import MaskSettings
    from histofuse.slides.tiling import TilingSettings

    features = config["features"]
    if features["source"] == "precomputed":
        _existing(features.get("precomputed_dir"), key="features.precomputed_dir", source=source, folder=True)
        return
    mask = config["tissue_mask"]
    _built(
        lambda: MaskSettings(
            method=mask["method"],
            mpp=mask["mpp"],
            background_filter=mask["background_filter"],
            max_background_grey=mask["max_background_grey"],
            min_saturation=mask["min_saturation"],
            min_tissue_um2=mask["min_tissue_um2"],
            pen_marks=tuple(mask["pen_marks"]),
        ),
        source=source,
    )
    tiling = config["tiling"]
    _built(
        lambda: TilingSettings(
            mpp=tiling["mpp"],
            tile_px=tiling["tile_px"],
            overlap_px=tiling["overlap_px"],
            tissue_threshold=tiling["tissue_threshold"],
            max_tiles=tiling["max_tiles"],
            seed=tiling["seed"],
        ),
        source=source,
    )
    _check_extraction(features, reader=config["reader"], source=source)


def _check_extraction(features: Mapping[str, Any], *, reader: str, source: str) -> None:
    from histofuse.features.encoders import ENCODER_KEY, is_known_encoder, list_encoders
    from histofuse.features.extract import ExtractSettings

    if not is_known_encoder(features["encoder"]):
        raise ConfigError(
            f"unknown encoder '{features['encoder']}'.",
            path=source,
            column=ENCODER_KEY,
            fix=f"use one of: {', '.join(list_encoders())}.",
        )
    _built(
        lambda: ExtractSettings(
            batch_size=features["batch_size"],
            num_workers=features["num_workers"],
            device=features["device"],
            precision=features["precision"],
            reader=reader,
            region_px=features["region_px"],
            region_decoder=features["region_decoder"],
            compile=features["compile"],
            stain_norm=features["stain_norm"] or None,
            stain_target=features["stain_target"] or None,
        ),
        source=source,
    )
    _existing(features.get("stain_target"), key="features.stain_target", source=source)


def check_cohort_settings(config: Mapping[str, Any], *, source: str) -> None:
    """The folds, the table preprocessing and the Cox settings (when a Cox model is trained)."""
    from histofuse.folds import FoldSettings
    from histofuse.preprocess import PreprocessSettings

    folds = config["folds"]
    _built(
        lambda: FoldSettings(
            k=folds["k"],
            seed=folds["seed"],
            val_fraction=folds["val_fraction"],
            source=folds["source"],
            stratify=folds["stratify"],
        ),
        source=source,
    )
    _built(lambda: PreprocessSettings.from_mapping(config["preprocessing"]), source=source)
    classes = [str(c) for c in config["labels"]["grade_classes"]]
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise ConfigError(
            f"labels.grade_classes names {repeated} more than once.",
            path=source,
            column="labels.grade_classes",
            fix="list every grade class once.",
        )
    _check_cox(config["training"], source=source)


def _check_cox(training: Mapping[str, Any], *, source: str) -> None:
    from histofuse.training.cox import COX_MODELS, CoxSettings

    if any(model in COX_MODELS for model in training["models"]):
        _built(lambda: CoxSettings.from_mapping(training.get("cox")), source=source)

"""Penalised Cox proportional-hazards baselines (lifelines).

``cox_clinical``: Cox on a few patient-level covariates. ``cox_genomic``: ridge / elastic-net Cox
on the genomic and/or clinical features as the fold's preprocessing outputs them (the comparator
researchers report beside genomic networks; ``training.cox_genomic``).

The classic clinical baseline of the glioma papers: Cox regression on grade and histomolecular
subtype (or any label / clinical columns). Covariates are looked up in ``patients.parquet`` (class
labels such as ``grade``, ``subtype``, ``diagnosis``: categorical) and then in
``clinical.parquet``; they are imputed, one-hot encoded and scaled by a
:class:`~histofuse.preprocess.TableTransform` fitted on the fold's training part only, and the
model is fitted on the training patients with a known survival time and event. It writes the same
predictions table as the neural models (``risk`` = log partial hazard) so evaluation treats both
alike.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from histofuse.configuration import CoxConfig, CoxGenomicConfig
from histofuse.errors import ConfigError, HistofuseError
from histofuse.io import atomic_path
from histofuse.preprocess import FoldPreprocessing, TableTransform
from histofuse.training.data import read_fold

log = logging.getLogger(__name__)

__all__ = ["COX_MODELS", "CoxFeatureSettings", "CoxSettings", "check_cox_inputs", "train_cox_fold"]

COX_MODELS: tuple[str, ...] = ("cox_clinical", "cox_genomic")
COX_INPUTS: tuple[str, ...] = ("genomics", "clinical")
CHECKPOINT_FORMAT = "histofuse-cox-1"
_LABEL_COLUMNS = ("grade", "diagnosis", "subtype", "aln", "molecular_grade4")


_COXSETTINGS_DEFAULTS = CoxConfig()
"""Defaults of ``CoxSettings``, from the configuration's description (:mod:`histofuse.configuration`)."""


@dataclass(frozen=True, kw_only=True)
class CoxSettings:
    """Config section ``training.cox``."""

    covariates: tuple[str, ...] = tuple(_COXSETTINGS_DEFAULTS.covariates)
    """Columns of the patients table (class labels) or of the clinical table."""
    penalizer: float = _COXSETTINGS_DEFAULTS.penalizer
    """L2 penalty on the coefficients (lifelines' ``penalizer``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "covariates", tuple(self.covariates))
        if not self.covariates:
            raise ConfigError("training.cox.covariates is empty.", column="training.cox.covariates")
        if not self.penalizer >= 0:
            raise ConfigError(f"training.cox.penalizer must be >= 0, got {self.penalizer}.", column="training.cox.penalizer")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> CoxSettings:
        values = dict(mapping or {})
        unknown = sorted(set(values) - {"covariates", "penalizer"})
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in training.cox.", column="training.cox")
        return cls(**values)


_COXFEATURESETTINGS_DEFAULTS = CoxGenomicConfig()
"""Defaults of ``CoxFeatureSettings``, from the configuration's description (:mod:`histofuse.configuration`)."""


@dataclass(frozen=True, kw_only=True)
class CoxFeatureSettings:
    """Config section ``training.cox_genomic``: the penalised Cox model on preprocessed features."""

    inputs: tuple[str, ...] = tuple(_COXFEATURESETTINGS_DEFAULTS.inputs)
    """Tables whose preprocessed features enter the model: genomics and/or clinical."""
    penalizer: float = _COXFEATURESETTINGS_DEFAULTS.penalizer
    """Penalty strength (lifelines' ``penalizer``; the features are z-scored on the fold's training part)."""
    l1_ratio: float = _COXFEATURESETTINGS_DEFAULTS.l1_ratio
    """Share of L1 in the penalty: 0 = ridge, 1 = lasso, between = elastic net."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        bad = [i for i in self.inputs if i not in COX_INPUTS] or ([] if self.inputs else ["(none)"])
        if bad or len(set(self.inputs)) != len(self.inputs):
            raise ConfigError(
                f"training.cox_genomic.inputs must list genomics and/or clinical once each, got {list(self.inputs)}.",
                column="training.cox_genomic.inputs",
            )
        if not self.penalizer > 0:
            raise ConfigError("training.cox_genomic.penalizer must be > 0 (many features).", column="training.cox_genomic.penalizer")
        if not 0.0 <= self.l1_ratio <= 1.0:
            raise ConfigError("training.cox_genomic.l1_ratio must lie in [0, 1].", column="training.cox_genomic.l1_ratio")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> CoxFeatureSettings:
        values = dict(mapping or {})
        unknown = sorted(set(values) - {"inputs", "penalizer", "l1_ratio"})
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in training.cox_genomic.", column="training.cox_genomic")
        return cls(**values)


def check_cox_inputs(
    models: Sequence[str],
    *,
    modalities: Sequence[str],
    cox: Mapping[str, Any] | None,
    cox_genomic: Mapping[str, Any] | None,
    clinical_columns: Sequence[str] | None = None,
    source: str | None = None,
) -> None:
    """Before any job: the Cox models' inputs are data the chosen modalities provide.

    ``clinical_columns``: the clinical table's columns when known before any job (histofuse's own
    clinical sheet); then every clinical covariate must be one of them.
    """
    if "cox_clinical" in models:
        settings = CoxSettings.from_mapping(cox)
        clinical = [c for c in settings.covariates if c not in _LABEL_COLUMNS]
        if clinical and "clinical" not in modalities:
            raise ConfigError(
                f"training.cox.covariates {clinical} are clinical columns, but modalities {list(modalities)} leave "
                "the clinical table out.",
                path=source,
                column="training.cox.covariates",
                fix=f"add clinical to modalities (modalities: {[*modalities, 'clinical']}), or use only labels "
                f"({', '.join(_LABEL_COLUMNS)}) as covariates.",
            )
        absent = [c for c in clinical if clinical_columns is not None and c not in clinical_columns]
        if absent:
            raise ConfigError(
                f"training.cox.covariates {absent} are not columns of the clinical table (its columns: "
                f"{list(clinical_columns or [])[:20]}).",
                path=source,
                column="training.cox.covariates",
                fix="name clinical columns that the table holds, or labels (" + ", ".join(_LABEL_COLUMNS) + ").",
            )
    if "cox_genomic" in models:
        missing = [i for i in CoxFeatureSettings.from_mapping(cox_genomic).inputs if i not in modalities]
        if missing:
            raise ConfigError(
                f"cox_genomic uses {missing} (training.cox_genomic.inputs), which modalities {list(modalities)} leave out.",
                path=source,
                column="training.cox_genomic.inputs",
                fix=f"add {' and '.join(missing)} to modalities, or set training.cox_genomic.inputs to tables the "
                "modalities provide.",
            )


def _covariate_frame(tables_dir: Path, patients: pd.DataFrame, covariates: Sequence[str]) -> pd.DataFrame:
    clinical_path = tables_dir / "clinical.parquet"
    clinical = pd.read_parquet(clinical_path) if clinical_path.exists() else pd.DataFrame({"patient_id": []})
    clinical = clinical.assign(patient_id=clinical["patient_id"].astype(str)).set_index("patient_id")
    frame = pd.DataFrame(index=patients.index)
    for name in covariates:
        if name in patients.columns and name in _LABEL_COLUMNS:
            values = patients[name].astype("Int64")
            frame[name] = values.astype("string")  # class labels are categories, not numbers
        elif name in clinical.columns:
            frame[name] = clinical[name].reindex(patients.index)
        else:
            raise ConfigError(
                f"Cox covariate '{name}' is neither a label of the patients table nor a clinical column "
                f"(clinical columns: {list(clinical.columns)[:20]}).",
                path=clinical_path,
                column="training.cox.covariates",
                fix="name columns that the cohort's tables hold"
                + ("; with no clinical column, add clinical to modalities." if clinical.columns.empty else "."),
            )
    return frame


def _feature_design(
    tables_dir: Path, patients: pd.DataFrame, preprocessing: Path, inputs: Sequence[str], *, fold: int
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The preprocessed genomic and/or clinical features of the fold's patients (fold preprocessing)."""
    fitted = FoldPreprocessing.read(preprocessing)
    if fitted.fold != fold:
        raise HistofuseError(f"{preprocessing} is fold {fitted.fold}'s preprocessing, not fold {fold}'s.", path=preprocessing)
    train_ids = set(fitted.train_patients)
    blocks = []
    for name in inputs:
        transform = getattr(fitted, name)
        table = pd.read_parquet(tables_dir / f"{name}.parquet")
        rows = table.assign(patient_id=table["patient_id"].astype(str)).set_index("patient_id").reindex(patients.index)
        blocks.append(pd.DataFrame(transform.transform(rows), columns=[f"{name}:{c}" for c in transform.output_columns], index=patients.index))
    design = pd.concat(blocks, axis=1)
    if design.shape[1] == 0:
        raise HistofuseError(
            f"fold {fold}: the preprocessing of {list(inputs)} leaves no feature for cox_genomic.",
            path=preprocessing,
            fix="check that the cohort has genomic / clinical data, or change training.cox_genomic.inputs.",
        )
    log.info("fold %d: %d features from %s (%d training patients in the preprocessing)", fold, design.shape[1], list(inputs), len(train_ids))
    return design, {"inputs": list(inputs), "preprocessing": str(preprocessing), "features": list(design.columns)}


def _fold_patients(tables_dir: Path, folds_tsv: Path, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fold's rows (sorted by patient) and their rows of ``patients.parquet``, in that order."""
    rows = read_fold(folds_tsv, fold).sort_values("patient_id", kind="stable").reset_index(drop=True)
    patients = pd.read_parquet(tables_dir / "patients.parquet")
    patients = patients.assign(patient_id=patients["patient_id"].astype(str)).set_index("patient_id")
    unknown = [p for p in rows["patient_id"] if p not in patients.index]
    if unknown:
        raise HistofuseError(
            f"{len(unknown)} patient(s) of fold {fold} are not in patients.parquet (first: {unknown[0]!r}).",
            path=folds_tsv,
            fix="rebuild the folds from the current patient table.",
        )
    return rows, patients.loc[rows["patient_id"]]


def _design(
    model_name: str,
    settings: CoxSettings | CoxFeatureSettings,
    *,
    tables_dir: Path,
    patients: pd.DataFrame,
    is_train: np.ndarray,
    preprocessing: Path | None,
    fold: int,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, float]]:
    """The design matrix, its description for the checkpoint and the fitter's options."""
    if isinstance(settings, CoxFeatureSettings):
        if preprocessing is None:
            raise HistofuseError(f"{model_name} needs the fold's preprocessing file.", fix="pass --preprocessing.")
        design, described = _feature_design(tables_dir, patients, Path(preprocessing), settings.inputs, fold=fold)
        return design, described, {"penalizer": settings.penalizer, "l1_ratio": settings.l1_ratio}
    covariates = _covariate_frame(tables_dir, patients, settings.covariates)
    transform = TableTransform.fit(covariates.loc[is_train])
    design = pd.DataFrame(transform.transform(covariates), columns=transform.output_columns, index=patients.index)
    described = {"covariates": list(settings.covariates), "transform": json.dumps(transform.to_dict())}
    return design, described, {"penalizer": settings.penalizer}


def _fit(model_name: str, fold: int, train: pd.DataFrame, fitter_options: dict[str, float]) -> Any:
    """A lifelines ``CoxPHFitter`` fitted on ``train`` (columns ``_time`` and ``_event`` added)."""
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    fitter = CoxPHFitter(**fitter_options)
    try:
        fitter.fit(train, duration_col="_time", event_col="_event")
    except ConvergenceError as exc:
        raise HistofuseError(
            f"{model_name} fold {fold}: the Cox model did not converge ({exc}).",
            fix="raise training.cox.penalizer or use fewer covariates.",
        ) from None
    return fitter


def _predictions(
    model_name: str, fold: int, rows: pd.DataFrame, patients: pd.DataFrame, time: np.ndarray, risk: np.ndarray
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "patient_id": pd.Series(rows["patient_id"].to_numpy(), dtype=str),
            "fold": np.full(len(rows), fold, dtype=np.int64),
            "split": pd.Series(rows["split"].to_numpy(), dtype=str),
            "model": pd.Series([model_name] * len(rows), dtype=str),
            "grade": pd.array(patients["grade"].to_numpy(), dtype="Int64") if "grade" in patients.columns else pd.NA,
            "survival_time": time,
            "event": pd.array(patients["event"].to_numpy(), dtype="Int64"),
            "risk": risk,
        }
    )


def _write_history(
    out_history: Path, fitter: Any, design: pd.DataFrame, rows: pd.DataFrame, time: np.ndarray, event: np.ndarray, n_train: int
) -> None:
    """One row: the training and validation negative log partial likelihoods."""
    is_val = (rows["split"] == "val").to_numpy() & np.isfinite(time) & np.isfinite(event) & (time > 0)
    val_loss = (
        -float(fitter.score(design.loc[is_val].assign(_time=time[is_val], _event=event[is_val]), scoring_method="log_likelihood"))
        if is_val.sum() > 1
        else float("nan")
    )
    history = pd.DataFrame([{"epoch": 1, "train_loss": -float(fitter.log_likelihood_) / n_train, "val_loss": val_loss}])
    with atomic_path(out_history) as tmp:
        history.to_csv(tmp, sep="\t", index=False)


def train_cox_fold(
    *,
    model_name: str,
    fold: int,
    tables_dir: Path,
    folds_tsv: Path,
    settings: CoxSettings | CoxFeatureSettings,
    out_checkpoint: Path,
    out_predictions: Path,
    out_history: Path | None = None,
    preprocessing: Path | None = None,
) -> None:
    """Fit the Cox model on the fold's training part; predict every patient of the fold.

    :class:`CoxSettings`: covariates from the patients / clinical tables (``cox_clinical``);
    :class:`CoxFeatureSettings`: the fold's preprocessed features (``cox_genomic``, needs ``preprocessing``).
    """
    tables_dir = Path(tables_dir)
    rows, patients = _fold_patients(tables_dir, folds_tsv, fold)
    is_train = (rows["split"] == "train").to_numpy()
    design, described, fitter_options = _design(
        model_name, settings, tables_dir=tables_dir, patients=patients, is_train=is_train, preprocessing=preprocessing, fold=fold
    )
    time = patients["survival_time"].to_numpy(dtype=np.float64, na_value=np.nan)
    event = patients["event"].to_numpy(dtype=np.float64, na_value=np.nan)
    usable = is_train & np.isfinite(time) & np.isfinite(event) & (time > 0)
    if usable.sum() < 2 or event[usable].sum() < 1:
        raise HistofuseError(f"fold {fold}: too few training patients with a survival time and an event for a Cox model.")
    fitter = _fit(model_name, fold, design.loc[usable].assign(_time=time[usable], _event=event[usable]), fitter_options)
    risk = np.log(fitter.predict_partial_hazard(design).to_numpy(dtype=np.float64))
    log.info(
        "%s fold %d: fitted on %d patients (%d events); coefficients %s",
        model_name,
        fold,
        int(usable.sum()),
        int(event[usable].sum()),
        {k: round(float(v), 3) for k, v in fitter.params_.items()},
    )
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model_name": model_name,
        "fold": fold,
        **described,
        **fitter_options,
        "coefficients": {str(k): float(v) for k, v in fitter.params_.items()},
        "n_train": int(usable.sum()),
    }
    with atomic_path(out_checkpoint) as tmp:
        torch.save(checkpoint, tmp)
    with atomic_path(out_predictions) as tmp:
        _predictions(model_name, fold, rows, patients, time, risk).to_parquet(tmp, index=False)
    if out_history is not None:
        _write_history(Path(out_history), fitter, design, rows, time, event, int(usable.sum()))

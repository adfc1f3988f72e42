"""A penalised Cox proportional-hazards model on a few patient-level covariates (lifelines).

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

from histofuse.errors import ConfigError, HistofuseError
from histofuse.io import atomic_path
from histofuse.preprocess import TableTransform
from histofuse.training.data import read_fold

log = logging.getLogger(__name__)

__all__ = ["COX_MODELS", "CoxSettings", "train_cox_fold"]

COX_MODELS: tuple[str, ...] = ("cox_clinical",)
CHECKPOINT_FORMAT = "histofuse-cox-1"
_LABEL_COLUMNS = ("grade", "diagnosis", "subtype", "aln", "molecular_grade4")


@dataclass(frozen=True, kw_only=True)
class CoxSettings:
    """Config section ``training.cox``."""

    covariates: tuple[str, ...] = ("grade", "subtype")
    """Columns of the patients table (class labels) or of the clinical table."""
    penalizer: float = 0.1
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
                fix="name columns that the cohort's tables hold.",
            )
    return frame


def train_cox_fold(
    *,
    model_name: str,
    fold: int,
    tables_dir: Path,
    folds_tsv: Path,
    settings: CoxSettings,
    out_checkpoint: Path,
    out_predictions: Path,
    out_history: Path | None = None,
) -> None:
    """Fit the Cox model on the fold's training part; predict every patient of the fold."""
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    tables_dir = Path(tables_dir)
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
    patients = patients.loc[rows["patient_id"]]
    covariates = _covariate_frame(tables_dir, patients, settings.covariates)
    is_train = (rows["split"] == "train").to_numpy()
    transform = TableTransform.fit(covariates.loc[is_train])
    design = pd.DataFrame(transform.transform(covariates), columns=transform.output_columns, index=patients.index)

    time = patients["survival_time"].to_numpy(dtype=np.float64, na_value=np.nan)
    event = patients["event"].to_numpy(dtype=np.float64, na_value=np.nan)
    usable = is_train & np.isfinite(time) & np.isfinite(event) & (time > 0)
    if usable.sum() < 2 or event[usable].sum() < 1:
        raise HistofuseError(f"fold {fold}: too few training patients with a survival time and an event for a Cox model.")
    train = design.loc[usable].assign(_time=time[usable], _event=event[usable])
    fitter = CoxPHFitter(penalizer=settings.penalizer)
    try:
        fitter.fit(train, duration_col="_time", event_col="_event")
    except ConvergenceError as exc:
        raise HistofuseError(
            f"{model_name} fold {fold}: the Cox model did not converge ({exc}).",
            fix="raise training.cox.penalizer or use fewer covariates.",
        ) from None
    risk = np.log(fitter.predict_partial_hazard(design).to_numpy(dtype=np.float64))
    log.info(
        "%s fold %d: fitted on %d patients (%d events); coefficients %s",
        model_name,
        fold,
        int(usable.sum()),
        int(event[usable].sum()),
        {k: round(float(v), 3) for k, v in fitter.params_.items()},
    )
    predictions = pd.DataFrame(
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
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model_name": model_name,
        "fold": fold,
        "covariates": list(settings.covariates),
        "penalizer": settings.penalizer,
        "transform": json.dumps(transform.to_dict()),
        "coefficients": {str(k): float(v) for k, v in fitter.params_.items()},
        "n_train": int(usable.sum()),
    }
    with atomic_path(out_checkpoint) as tmp:
        torch.save(checkpoint, tmp)
    with atomic_path(out_predictions) as tmp:
        predictions.to_parquet(tmp, index=False)
    if out_history is not None:
        is_val = (rows["split"] == "val").to_numpy() & np.isfinite(time) & np.isfinite(event) & (time > 0)
        val_loss = (
            -float(fitter.score(design.loc[is_val].assign(_time=time[is_val], _event=event[is_val]), scoring_method="log_likelihood"))
            if is_val.sum() > 1
            else float("nan")
        )
        history = pd.DataFrame(
            [{"epoch": 1, "train_loss": -float(fitter.log_likelihood_) / int(usable.sum()), "val_loss": val_loss}]
        )
        with atomic_path(out_history) as tmp:
            history.to_csv(tmp, sep="\t", index=False)

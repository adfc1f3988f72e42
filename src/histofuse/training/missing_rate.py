"""Test AUC when the clinical data of a growing share of test patients is withheld.

For each rate ``r`` the clinical data of ``round(r · n)`` of the fold's ``n`` test patients are
dropped. Which patients: a seeded random order of the test patients (seed and fold), whose first
``round(r · n)`` lose their data, so the sets are nested across rates and the same for every model.
Test patients whose clinical data are really missing (``FoldData.clinical_present``) stay missing
at every rate, as in training and ordinary prediction.

Every model gets the presence mask (``clinical_present``: real presence and not withheld) and, for a
patient without clinical data, the clinical row of a patient with no clinical value, imputed by the
fold's preprocessing with the training part's statistics (medians, modes, missing indicators set):

* ``bidistill`` routes such a patient through its slides-only branch, ``mm_impute`` replaces the
  row by zeros and sets its missing indicator;
* every other model reads the imputed row; a model that ignores clinical data (``abmil``) is
  unaffected.

The AUC is that of the run's AUC task (``binary``, else the first of grade / diagnosis);
``n_missing`` counts the test patients without clinical data at the rate, withheld or really missing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from histofuse.errors import ConfigError, HistofuseError
from histofuse.io import atomic_path
from histofuse.training.data import imputed_clinical_row, load_fold_for
from histofuse.training.settings import TrainSettings
from histofuse.training.trainer import infer, load_trained_model, task_auc

logger = logging.getLogger(__name__)

__all__ = ["MISSING_RATE_COLUMNS", "aggregate_missing_rates", "missing_rate_fold", "withheld"]

MISSING_RATE_COLUMNS: tuple[str, ...] = ("model", "fold", "rate", "auc", "n", "n_missing")


def withheld(n_test: int, rate: float, *, seed: int, fold: int) -> np.ndarray:
    """Boolean ``(n_test,)``: which test patients (in fold order) lose their clinical data at ``rate``."""
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"missing rate {rate} is outside [0, 1].", column="missing_rate.rates")
    order = np.random.default_rng([seed, fold]).permutation(n_test)
    mask = np.zeros(n_test, dtype=bool)
    mask[order[: int(round(rate * n_test))]] = True
    return mask


def missing_rate_fold(
    *,
    checkpoint: Path,
    fold: int,
    features_dir: Path,
    tables_dir: Path,
    folds_tsv: Path,
    preprocessing: Path,
    rates: Sequence[float],
    seed: int,
    out: Path,
    use_wsi: bool = True,
) -> pd.DataFrame:
    """AUC of one trained model on one fold's test patients at each rate; written to ``out`` (TSV)."""
    model, content = load_trained_model(Path(checkpoint))
    model_name = str(content["model_name"])
    settings = TrainSettings.from_mapping({**content["settings"], "device": "cpu", "resume": False})
    task = settings.auc_task
    if task is None:
        raise ConfigError(
            f"the missing-rate evaluation scores an AUC, but {model_name} was trained only on {list(settings.tasks)}.",
            path=checkpoint,
            fix="train a classification or binary task (training.tasks).",
        )
    if int(content["fold"]) != fold:
        raise HistofuseError(f"checkpoint is of fold {content['fold']}, not fold {fold}.", path=checkpoint)
    data = load_fold_for(
        settings,
        fold=fold,
        features_dir=features_dir,
        tables_dir=tables_dir,
        folds_tsv=folds_tsv,
        preprocessing=preprocessing,
        use_wsi=use_wsi,
    )
    test = data.indices("test")
    labelled = data.mask(task)[torch.from_numpy(test)].numpy()
    target = data.targets[task][torch.from_numpy(test)].numpy()[labelled].astype(np.int64)
    imputed = imputed_clinical_row(data.preprocessing)
    device = torch.device("cpu")
    records = []
    for rate in rates:
        drop = torch.from_numpy(withheld(len(test), float(rate), seed=seed, fold=fold))
        present = data.clinical_present[torch.from_numpy(test)] & ~drop
        clinical = data.clinical[torch.from_numpy(test)].clone()
        clinical[~present] = imputed
        logits = infer(model, data, test, device, settings, clinical=clinical, clinical_present=present)
        scored = logits[task][torch.from_numpy(labelled)]
        auc = task_auc(task, scored, target) if len(np.unique(target)) > 1 else float("nan")
        records.append(
            {"model": model_name, "fold": fold, "rate": float(rate), "auc": auc, "n": int(labelled.sum()), "n_missing": int((~present).sum())}
        )
        logger.info("%s fold %d: missing rate %.2f (%d patients): %s AUC %.4f", model_name, fold, rate, int((~present).sum()), task, auc)
    table = pd.DataFrame.from_records(records, columns=list(MISSING_RATE_COLUMNS))
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="NaN")
    return table


def aggregate_missing_rates(fold_tables: Sequence[Path], out: Path) -> pd.DataFrame:
    """Concatenate the per-fold tables into ``model, fold, rate, auc, n, n_missing`` (sorted)."""
    frames = []
    for path in fold_tables:
        frame = pd.read_csv(path, sep="\t")
        missing = [column for column in MISSING_RATE_COLUMNS if column not in frame.columns]
        if missing:
            raise HistofuseError(f"missing column(s) {missing}.", path=path, fix="rerun the missing_rate rule.")
        frames.append(frame[list(MISSING_RATE_COLUMNS)])
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(MISSING_RATE_COLUMNS))
    table = table.sort_values(["model", "fold", "rate"], kind="stable").reset_index(drop=True)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="NaN")
    return table

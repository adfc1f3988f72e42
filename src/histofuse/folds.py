"""Patient-level cross-validation folds, stratified on grade and event, seeded, with a validation part."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from histofuse.errors import ConfigError
from histofuse.io import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FoldSettings:
    """How folds are drawn."""

    k: int = 5
    seed: int = 0
    val_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ConfigError("folds.k must be at least 2.", column="folds.k")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError("folds.val_fraction must lie in (0, 0.5).", column="folds.val_fraction")


def strata(patients: pd.DataFrame) -> np.ndarray:
    """One stratum per patient: grade (or 'NA') × event (or 'NA'); rare strata merged by grade."""
    grade = patients["grade"].astype("string").fillna("NA")
    event = patients["event"].astype("string").fillna("NA")
    combined = (grade + "|" + event).to_numpy(dtype=object)
    return combined


def _merge_rare(labels: np.ndarray, minimum: int) -> np.ndarray:
    labels = labels.copy()
    for _ in range(2):
        values, counts = np.unique(labels, return_counts=True)
        rare = set(values[counts < minimum])
        if not rare:
            break
        labels = np.array([lab.split("|")[0] if lab in rare else lab for lab in labels], dtype=object)
    values, counts = np.unique(labels, return_counts=True)
    rare = set(values[counts < minimum])
    if not rare:
        return labels
    largest = values[np.argmax(counts)]
    return np.array([largest if lab in rare else lab for lab in labels], dtype=object)


def make_folds(patients: pd.DataFrame, settings: FoldSettings) -> pd.DataFrame:
    """``patient_id, fold, split`` with every patient in exactly one test part across folds."""
    ids = patients["patient_id"].astype(str).to_numpy()
    if len(np.unique(ids)) != len(ids):
        raise ConfigError("duplicate patient ids in the patients table.", column="patient_id")
    if len(ids) < settings.k * 2:
        raise ConfigError(
            f"{len(ids)} patients are too few for {settings.k} folds.",
            column="folds.k",
            fix="lower folds.k or add patients.",
        )
    labels = _merge_rare(strata(patients), settings.k)
    splitter = StratifiedKFold(n_splits=settings.k, shuffle=True, random_state=settings.seed)
    rows = []
    for fold, (train_idx, test_idx) in enumerate(splitter.split(ids, labels)):
        train_labels = _merge_rare(labels[train_idx], 2)
        try:
            fit_idx, val_idx = train_test_split(
                train_idx,
                test_size=settings.val_fraction,
                random_state=settings.seed + fold,
                stratify=train_labels,
            )
        except ValueError:
            fit_idx, val_idx = train_test_split(train_idx, test_size=settings.val_fraction, random_state=settings.seed + fold)
        for split, idx in (("train", fit_idx), ("val", val_idx), ("test", test_idx)):
            rows.extend((ids[i], fold, split) for i in sorted(idx))
    folds = pd.DataFrame(rows, columns=["patient_id", "fold", "split"])
    return folds.sort_values(["fold", "split", "patient_id"]).reset_index(drop=True)


def write_folds(folds: pd.DataFrame, path: Path) -> None:
    """Write folds as TSV atomically."""
    with atomic_path(path) as tmp:
        folds.to_csv(tmp, sep="\t", index=False)

"""Patient-level cross-validation folds, seeded, with a validation part.

``source: kfold`` draws k stratified folds (on the primary label and the survival event);
``source: cohort`` takes the cohort's own split files (e.g. the 15 PNAS splits of TCGA-GBMLGG or
MCAT's ``splits_{k}.csv``), uses the first ``k`` of them and carves the validation part out of each
training part when the file gives none; ``source: files`` does the same with split files any
cohort may give (a folds table or id lists per split, :func:`histofuse.cohorts.splits.read_split_files`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from histofuse.configuration import FoldsConfig
from histofuse.errors import ConfigError
from histofuse.io import atomic_path

log = logging.getLogger(__name__)

FOLD_SOURCES: tuple[str, ...] = ("kfold", "cohort", "files")


_FOLDSETTINGS_DEFAULTS = FoldsConfig()
"""Defaults of ``FoldSettings``, from the configuration's description (:mod:`histofuse.configuration`)."""


@dataclass(frozen=True, kw_only=True)
class FoldSettings:
    """How folds are drawn."""

    k: int = _FOLDSETTINGS_DEFAULTS.k
    seed: int = _FOLDSETTINGS_DEFAULTS.seed
    val_fraction: float = _FOLDSETTINGS_DEFAULTS.val_fraction
    source: str = _FOLDSETTINGS_DEFAULTS.source
    stratify: str = _FOLDSETTINGS_DEFAULTS.stratify
    """Label column stratified on (with the event); ``none`` stratifies on the event only."""

    def __post_init__(self) -> None:
        if self.source not in FOLD_SOURCES:
            raise ConfigError(
                f"folds.source '{self.source}' is not one of {list(FOLD_SOURCES)}.", column="folds.source"
            )
        if self.k < 1 or (self.source == "kfold" and self.k < 2):
            raise ConfigError("folds.k must be at least 2 (at least 1 with source: cohort or files).", column="folds.k")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError("folds.val_fraction must lie in (0, 0.5).", column="folds.val_fraction")


def strata(patients: pd.DataFrame, label: str = "grade") -> np.ndarray:
    """One stratum per patient: label (or 'NA') × event (or 'NA'); rare strata merged by label."""
    missing = pd.Series(pd.NA, index=patients.index, dtype="string")
    primary = patients[label].astype("string") if label in patients.columns else missing
    event = patients["event"].astype("string") if "event" in patients.columns else missing
    combined = (primary.fillna("NA") + "|" + event.fillna("NA")).to_numpy(dtype=object)
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
    if settings.source != "kfold":
        raise ConfigError(
            f"folds.source is '{settings.source}': the folds come from split files.",
            column="folds.source",
            fix="use folds_from_cohort_splits, or set folds.source: kfold.",
        )
    labels = _merge_rare(strata(patients, settings.stratify), settings.k)
    splitter = StratifiedKFold(n_splits=settings.k, shuffle=True, random_state=settings.seed)
    rows: list[tuple[str, int, str]] = []
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


def _carve_validation(train_ids: np.ndarray, labels: np.ndarray, settings: FoldSettings, fold: int) -> tuple[np.ndarray, np.ndarray]:
    merged = _merge_rare(labels, 2)
    try:
        fit, val = train_test_split(
            train_ids, test_size=settings.val_fraction, random_state=settings.seed + fold, stratify=merged
        )
    except ValueError:
        fit, val = train_test_split(train_ids, test_size=settings.val_fraction, random_state=settings.seed + fold)
    return np.asarray(fit), np.asarray(val)


def folds_from_cohort_splits(
    splits: pd.DataFrame, patients: pd.DataFrame, settings: FoldSettings, *, path: Path | None = None
) -> pd.DataFrame:
    """The first ``settings.k`` of the cohort's own folds, with a validation part carved from train.

    Patients of a fold not in ``patients`` (e.g. left out for lack of data) are dropped; a fold
    whose file gives a ``val`` part keeps it.
    """
    available = sorted(int(f) for f in pd.unique(splits["fold"]))
    if not available:
        raise ConfigError(
            "folds.source is 'cohort' but the cohort has no split files.",
            path=path,
            column="folds.source",
            fix="give the format's split files (e.g. cohort.splits) or set folds.source: kfold.",
        )
    if settings.k > len(available):
        raise ConfigError(
            f"folds.k = {settings.k} but the cohort's split files hold {len(available)} folds.",
            path=path,
            column="folds.k",
            fix=f"set folds.k to at most {len(available)}.",
        )
    known = patients.assign(patient_id=patients["patient_id"].astype(str)).set_index("patient_id")
    label_of = pd.Series(strata(known.reset_index(), settings.stratify), index=known.index)
    rows: list[tuple[str, int, str]] = []
    for new_fold, fold in enumerate(available[: settings.k]):
        part = splits[(splits["fold"] == fold) & splits["patient_id"].astype(str).isin(known.index)]
        ids = {name: np.sort(part.loc[part["split"] == name, "patient_id"].astype(str).to_numpy()) for name in ("train", "val", "test")}
        if len(ids["val"]) == 0:
            ids["train"], ids["val"] = _carve_validation(ids["train"], label_of.loc[ids["train"]].to_numpy(), settings, new_fold)
        for name, members in ids.items():
            rows.extend((pid, new_fold, name) for pid in sorted(members))
    folds = pd.DataFrame(rows, columns=["patient_id", "fold", "split"])
    log.info("%d folds from the cohort's split files (of %d available)", settings.k, len(available))
    return folds.sort_values(["fold", "split", "patient_id"]).reset_index(drop=True)


TASK_LABELS: dict[str, tuple[str, ...]] = {"grade": ("grade",), "survival": ("survival_time", "event")}


def check_fold_labels(
    folds: pd.DataFrame,
    patients: pd.DataFrame,
    tasks: tuple[str, ...],
    *,
    path: Path | None = None,
    binary_label: str = "aln",
) -> None:
    """Every fold's training part needs labelled patients for every task (survival: an observed death).

    A task whose labels are all missing in a fold's training part cannot be learnt there; this
    stops the run before any model is trained. The ``binary`` task's labels are the column
    ``binary_label`` (``training.binary_label``).
    """
    known = patients.assign(patient_id=patients["patient_id"].astype(str)).set_index("patient_id")
    problems = []
    for fold, part in folds[folds["split"] == "train"].groupby("fold", sort=True):
        rows = known.reindex(part["patient_id"].astype(str))
        for task in tasks:
            columns = (binary_label,) if task == "binary" else TASK_LABELS.get(task, (task,))
            missing = [c for c in columns if c not in rows.columns]
            if missing:
                problems.append(f"task '{task}': the patients table has no column {', '.join(missing)}")
                continue
            labelled = rows[list(columns)].notna().all(axis=1)
            if task == "survival":
                labelled &= rows["event"].fillna(0).astype(float) == 1
            if not labelled.any():
                what = "an observed death (event 1) with a survival time" if task == "survival" else f"a {task} label"
                problems.append(f"fold {fold}, task '{task}': none of its {len(rows)} training patients has {what}")
    if problems:
        unique = list(dict.fromkeys(problems))
        raise ConfigError(
            "labels are missing for a task in a fold: " + "; ".join(unique[:10]) + ".",
            path=path,
            column="training.tasks",
            fix="fill in the labels in the patients sheet, or remove the task from training.tasks "
            "(with folds.source: kfold, folds.stratify on that label spreads the labelled patients over the folds).",
        )


def folds_for_tables(
    patients_parquet: Path,
    settings: FoldSettings,
    *,
    tasks: tuple[str, ...],
    binary_label: str = "aln",
    cohort_splits: Path | None = None,
    split_files: Mapping[str, str | Path] | None = None,
    source: str | Path | None = None,
) -> pd.DataFrame:
    """The folds of the prepared patients table (or of the cohort's own splits, or of ``folds.files``),
    with their labels checked.

    ``source``: the file a label problem is reported against (default: ``patients_parquet``), e.g. the
    patients sheet when the folds are tried out before any job.
    """
    patients = pd.read_parquet(patients_parquet)
    if settings.source == "cohort":
        if cohort_splits is None:
            raise ConfigError("folds.source is cohort but no cohort splits were given.", column="folds.source")
        splits = pd.read_csv(cohort_splits, sep="\t", dtype={"patient_id": str})
        folds = folds_from_cohort_splits(splits, patients, settings, path=cohort_splits)
    elif settings.source == "files":
        from histofuse.cohorts.splits import read_split_files

        if not split_files:
            raise ConfigError("folds.source is files but folds.files names no file.", column="folds.files")
        splits = read_split_files(split_files, patients["patient_id"].astype(str))
        first = Path(next(iter(split_files.values())))
        folds = folds_from_cohort_splits(splits, patients, settings, path=first)
    else:
        folds = make_folds(patients, settings)
    check_fold_labels(folds, patients, tasks, path=Path(source or patients_parquet), binary_label=binary_label)
    return folds


def write_folds(folds: pd.DataFrame, path: Path) -> None:
    """Write folds as TSV atomically."""
    with atomic_path(path) as tmp:
        folds.to_csv(tmp, sep="\t", index=False)

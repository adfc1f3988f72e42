"""One fold's patients in memory: tile-feature bags, preprocessed genomics and clinical data, labels.

Everything fitted from data (the table preprocessing of :mod:`histofuse.preprocess`, survival bin
edges) uses the fold's **train** split only, so validation and test patients never leak into it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch import Tensor

from histofuse.errors import HistofuseError
from histofuse.losses import survival_bins, to_bin
from histofuse.preprocess import FoldPreprocessing, PreprocessSettings, fit_fold_preprocessing

logger = logging.getLogger(__name__)

__all__ = [
    "SPLITS",
    "FoldData",
    "load_fold_data",
    "read_fold",
    "read_grade_classes",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
_FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True, kw_only=True, eq=False)
class FoldData:
    """The patients of one fold, in ``patient_ids`` order (sorted).

    ``grade`` and ``survival_bin`` hold -1 where the label is missing; ``censored`` is 1 for
    censored patients. ``grade_true``, ``survival_time`` and ``event`` keep the raw labels for the
    predictions table. Bags are stored on the CPU as float16 (float32 when values exceed float16).
    """

    fold: int
    patient_ids: tuple[str, ...]
    splits: npt.NDArray[np.str_]
    bags: list[Tensor]
    genomics: Tensor
    clinical: Tensor
    grade: Tensor
    survival_bin: Tensor
    censored: Tensor
    grade_true: pd.Series
    survival_time: npt.NDArray[np.float64]
    event: pd.Series
    n_tiles_dim: int
    preprocessing: FoldPreprocessing
    bin_edges: npt.NDArray[np.float64] | None
    grade_classes: list[str]
    encoder: str | None = None
    tasks: tuple[str, ...] = field(default=("grade", "survival"))

    @property
    def n_patients(self) -> int:
        return len(self.patient_ids)

    @property
    def n_genomic(self) -> int:
        return int(self.genomics.shape[1])

    @property
    def n_clinical(self) -> int:
        return int(self.clinical.shape[1])

    @property
    def gene_groups(self) -> list[list[int]]:
        """Genomic column indices per gene group (after preprocessing)."""
        return [list(indices) for indices in self.preprocessing.genomic_groups.values()]

    def indices(self, split: str) -> npt.NDArray[np.int64]:
        """Row indices of the patients in ``split``."""
        return np.flatnonzero(self.splits == split).astype(np.int64)

    def mask(self, task: str) -> Tensor:
        """Boolean ``(P,)`` mask of patients whose label for ``task`` is known."""
        if task == "grade":
            return self.grade >= 0
        if task == "survival":
            return self.survival_bin >= 0
        raise KeyError(task)

    def has_label(self, index: int) -> bool:
        """Whether patient ``index`` has a label for at least one trained task."""
        return any(bool(self.mask(task)[index]) for task in self.tasks)


def read_grade_classes(tables_dir: Path) -> list[str] | None:
    """Grade class names from ``{tables_dir}/labels.json`` (``{"grade": {"classes": [...]}}``).

    A top-level ``"grade_classes"`` list is accepted too. Returns None when the file is absent.
    """
    path = Path(tables_dir) / "labels.json"
    if not path.exists():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise HistofuseError(f"cannot read the label description ({exc}).", path=path) from None
    classes: object = None
    if isinstance(content, dict):
        grade = content.get("grade")
        if isinstance(grade, dict):
            classes = grade.get("classes")
        if classes is None:
            classes = content.get("grade_classes")
    if not isinstance(classes, list) or not classes:
        raise HistofuseError(
            "no grade class list found.",
            path=path,
            fix='write {"grade": {"classes": ["2", "3", "4"]}} (one name per class index).',
        )
    return [str(name) for name in classes]


def read_fold(folds_tsv: Path, fold: int) -> pd.DataFrame:
    """Rows of ``folds.tsv`` for ``fold``: ``patient_id`` (str) and ``split`` (train/val/test)."""
    folds_tsv = Path(folds_tsv)
    try:
        table = pd.read_csv(folds_tsv, sep="\t", dtype={"patient_id": str, "split": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise HistofuseError(f"cannot read the fold table ({exc}).", path=folds_tsv) from None
    missing = [column for column in ("patient_id", "fold", "split") if column not in table.columns]
    if missing:
        raise HistofuseError(
            f"missing column(s) {missing}.", path=folds_tsv, fix="columns must be patient_id, fold, split."
        )
    rows = table.loc[table["fold"] == fold, ["patient_id", "split"]].reset_index(drop=True)
    if rows.empty:
        known = sorted(pd.unique(table["fold"]).tolist())
        raise HistofuseError(
            f"fold {fold} has no rows (folds present: {known}).", path=folds_tsv, column="fold"
        )
    bad = ~rows["split"].isin(SPLITS)
    if bad.any():
        raise HistofuseError(
            f"unknown split {rows.loc[bad, 'split'].iloc[0]!r}.",
            path=folds_tsv,
            column="split",
            fix=f"use one of {list(SPLITS)}.",
        )
    duplicated = rows["patient_id"].duplicated()
    if duplicated.any():
        raise HistofuseError(
            f"patient {rows.loc[duplicated, 'patient_id'].iloc[0]!r} appears twice in fold {fold}.",
            path=folds_tsv,
            column="patient_id",
        )
    if not (rows["split"] == "train").any():
        raise HistofuseError(f"fold {fold} has no training patient.", path=folds_tsv, column="split")
    return rows


def _read_parquet(path: Path, required: Sequence[str]) -> pd.DataFrame:
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise HistofuseError(f"cannot read the table ({exc}).", path=path) from None
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise HistofuseError(f"missing column(s) {missing}.", path=path)
    table = table.copy()
    table["patient_id"] = table["patient_id"].astype(str)
    return table


def _read_patients(tables_dir: Path, tasks: Sequence[str]) -> pd.DataFrame:
    path = tables_dir / "patients.parquet"
    required = ["patient_id"]
    if "grade" in tasks:
        required.append("grade")
    if "survival" in tasks:
        required += ["survival_time", "event"]
    table = _read_parquet(path, required)
    if table["patient_id"].duplicated().any():
        duplicate = table.loc[table["patient_id"].duplicated(), "patient_id"].iloc[0]
        raise HistofuseError(f"patient {duplicate!r} is listed twice.", path=path, column="patient_id")
    for column, dtype in (("grade", "Int64"), ("event", "Int64"), ("survival_time", "float64")):
        if column not in table.columns:
            table[column] = pd.Series(pd.NA if dtype == "Int64" else np.nan, index=table.index, dtype=dtype)
        try:
            table[column] = table[column].astype(dtype)
        except (TypeError, ValueError) as exc:
            raise HistofuseError(f"values are not {dtype} ({exc}).", path=path, column=column) from None
    events = table["event"].dropna()
    if not events.isin([0, 1]).all():
        raise HistofuseError("event must be 0 (censored), 1 (death) or missing.", path=path, column="event")
    if (table["survival_time"] < 0).any():
        raise HistofuseError("survival_time must not be negative.", path=path, column="survival_time")
    return table.set_index("patient_id")


def _read_table(tables_dir: Path, name: str) -> pd.DataFrame:
    """``{name}.parquet`` with a text ``patient_id`` column (only that column when absent)."""
    path = tables_dir / f"{name}.parquet"
    if not path.exists():
        logger.info("no %s; training without %s features", path, name)
        return pd.DataFrame({"patient_id": pd.Series(dtype=str)})
    table = _read_parquet(path, ["patient_id"])
    if table["patient_id"].duplicated().any():
        duplicate = table.loc[table["patient_id"].duplicated(), "patient_id"].iloc[0]
        raise HistofuseError(f"patient {duplicate!r} is listed twice.", path=path, column="patient_id")
    return table


def _read_genomics(tables_dir: Path) -> pd.DataFrame:
    """Genomic features indexed by patient (0 columns when the table is absent or empty)."""
    path = tables_dir / "genomics.parquet"
    table = _read_table(tables_dir, "genomics").set_index("patient_id")
    for column in table.columns:
        try:
            table[column] = pd.to_numeric(table[column]).astype("float64")
        except (TypeError, ValueError) as exc:
            raise HistofuseError(
                f"genomic feature is not numeric ({exc}).", path=path, column=str(column)
            ) from None
    return table


def _slides_by_patient(tables_dir: Path) -> dict[str, list[str]]:
    path = tables_dir / "slides.parquet"
    table = _read_parquet(path, ["slide_id", "patient_id"])
    table["slide_id"] = table["slide_id"].astype(str)
    grouped: dict[str, list[str]] = {}
    for patient_id, slide_id in zip(table["patient_id"], table["slide_id"], strict=True):
        grouped.setdefault(patient_id, []).append(slide_id)
    return {patient: sorted(set(slides)) for patient, slides in grouped.items()}


def _read_features(path: Path) -> tuple[npt.NDArray[np.float32], str | None] | None:
    """A slide's tile features and their encoder; ``None`` for a slide excluded under ``on_error: skip``."""
    if not path.exists():
        raise HistofuseError(
            "tile-feature file is missing for a slide listed in slides.parquet.",
            path=path,
            fix="run feature extraction for this slide, or remove the slide from the sample sheet.",
        )
    try:
        with h5py.File(path, "r") as handle:
            if bool(handle.attrs.get("excluded", False)):
                return None
            if "features" not in handle:
                raise HistofuseError("no 'features' dataset.", path=path)
            features = np.asarray(handle["features"][()], dtype=np.float32)
            encoder = handle.attrs.get("encoder")
    except OSError as exc:
        raise HistofuseError(f"cannot read the tile features ({exc}).", path=path) from None
    if features.ndim != 2:
        raise HistofuseError(f"'features' must be 2-D (tiles × dims), got shape {features.shape}.", path=path)
    if isinstance(encoder, bytes):
        encoder = encoder.decode()
    return features, None if encoder is None else str(encoder)


def _compact(features: npt.NDArray[np.float32]) -> Tensor:
    """Store a bag as float16 when its values fit, else float32."""
    if features.size == 0 or float(np.abs(features).max()) < _FLOAT16_MAX:
        return torch.from_numpy(features.astype(np.float16))
    return torch.from_numpy(np.ascontiguousarray(features))


def _load_bags(
    patient_ids: Sequence[str], features_dir: Path, tables_dir: Path
) -> tuple[list[Tensor], int, str | None]:
    slides = _slides_by_patient(tables_dir)
    per_patient: list[list[npt.NDArray[np.float32]]] = []
    dims: dict[int, Path] = {}
    encoders: dict[str, Path] = {}
    excluded: list[str] = []
    for patient_id in patient_ids:
        arrays = []
        for slide_id in slides.get(patient_id, []):
            path = features_dir / f"{slide_id}.h5"
            found = _read_features(path)
            if found is None:
                excluded.append(slide_id)
                continue
            features, encoder = found
            dims.setdefault(features.shape[1], path)
            if encoder is not None:
                encoders.setdefault(encoder, path)
            arrays.append(features)
        per_patient.append(arrays)
    if excluded:
        logger.warning(
            "%d slide(s) excluded by an earlier stage are left out (see exclusions.tsv): %s",
            len(excluded),
            ", ".join(excluded),
        )
    if not dims:
        raise HistofuseError(
            "no tile-feature file found for any patient of this fold.",
            path=features_dir,
            fix="check that slides.parquet lists the fold's patients and that features were extracted.",
        )
    if len(dims) > 1:
        examples = ", ".join(f"{dim} ({path.name})" for dim, path in dims.items())
        raise HistofuseError(f"tile features have different dimensions: {examples}.", path=features_dir)
    if len(encoders) > 1:
        examples = ", ".join(f"{name} ({path.name})" for name, path in encoders.items())
        raise HistofuseError(f"tile features come from different encoders: {examples}.", path=features_dir)
    n_dim = next(iter(dims))
    bags = [
        _compact(np.concatenate(arrays, axis=0) if arrays else np.zeros((0, n_dim), dtype=np.float32))
        for arrays in per_patient
    ]
    n_empty = sum(1 for bag in bags if bag.shape[0] == 0)
    if n_empty:
        logger.info("%d of %d patients have no tile features (empty bags)", n_empty, len(bags))
    return bags, n_dim, next(iter(encoders), None)


def load_fold_data(
    *,
    fold: int,
    features_dir: Path,
    tables_dir: Path,
    folds_tsv: Path,
    tasks: Sequence[str] = ("grade", "survival"),
    n_bins: int = 4,
    preprocessing: FoldPreprocessing | None = None,
    use_wsi: bool = True,
) -> FoldData:
    """Load the patients of ``fold``; preprocess the tables with ``preprocessing``.

    ``preprocessing`` is the fold's fitted transform (from the preprocessing stage); when None it
    is fitted here, with default settings, on the fold's train split. ``use_wsi=False`` trains
    without slides (every bag empty).
    """
    features_dir, tables_dir = Path(features_dir), Path(tables_dir)
    rows = read_fold(folds_tsv, fold).sort_values("patient_id", kind="stable").reset_index(drop=True)
    patient_ids = tuple(rows["patient_id"].tolist())
    splits = rows["split"].to_numpy(dtype=str)
    train_rows = splits == "train"

    patients = _read_patients(tables_dir, tasks)
    unknown = [patient for patient in patient_ids if patient not in patients.index]
    if unknown:
        raise HistofuseError(
            f"{len(unknown)} patient(s) of fold {fold} are not in patients.parquet (first: {unknown[0]!r}).",
            path=folds_tsv,
            column="patient_id",
            fix="rebuild folds.tsv from the current patient table.",
        )
    labels = patients.loc[list(patient_ids)]

    grade_true = labels["grade"].reset_index(drop=True)
    grade_classes = read_grade_classes(tables_dir)
    if grade_classes is None:
        observed = patients["grade"].dropna()
        n_classes = int(observed.max()) + 1 if len(observed) else 0
        grade_classes = [str(index) for index in range(n_classes)]
        if "grade" in tasks:
            logger.warning("no labels.json in %s; assuming %d grade classes", tables_dir, n_classes)
    known_grades = grade_true.dropna()
    if len(known_grades) and (known_grades.min() < 0 or known_grades.max() >= len(grade_classes)):
        raise HistofuseError(
            f"grade must be a class index in [0, {len(grade_classes)}) (classes {grade_classes}).",
            path=tables_dir / "patients.parquet",
            column="grade",
        )
    grade = torch.tensor(grade_true.fillna(-1).to_numpy(dtype=np.int64), dtype=torch.long)
    if "grade" in tasks and not bool((grade[torch.from_numpy(train_rows)] >= 0).any()):
        raise HistofuseError(
            f"no training patient of fold {fold} has a grade.", path=tables_dir / "patients.parquet"
        )

    survival_time = labels["survival_time"].to_numpy(dtype=np.float64, na_value=np.nan)
    event = labels["event"].reset_index(drop=True)
    event_float = event.to_numpy(dtype=np.float64, na_value=np.nan)
    known_survival = np.isfinite(survival_time) & np.isfinite(event_float)
    bin_edges: npt.NDArray[np.float64] | None = None
    survival_bin = np.full(len(patient_ids), -1, dtype=np.int64)
    if "survival" in tasks:
        bin_edges = survival_bins(survival_time[train_rows], event_float[train_rows], n_bins=n_bins)
        survival_bin = np.where(known_survival, to_bin(survival_time, bin_edges), -1)
    censored = np.where(known_survival, 1.0 - event_float, 0.0)

    genomics_table = _read_genomics(tables_dir).reset_index()
    clinical_table = _read_table(tables_dir, "clinical")
    if preprocessing is None:
        groups_path = tables_dir / "gene_groups.parquet"
        preprocessing = fit_fold_preprocessing(
            fold=fold,
            fold_rows=rows,
            genomics=genomics_table,
            clinical=clinical_table,
            gene_groups=pd.read_parquet(groups_path) if groups_path.exists() else None,
            settings=PreprocessSettings(),
        )
    train_ids = tuple(sorted(np.asarray(patient_ids)[train_rows].tolist()))
    if tuple(preprocessing.train_patients) != train_ids:
        raise HistofuseError(
            f"the preprocessing of fold {fold} was fitted on other training patients than the fold's.",
            path=folds_tsv,
            fix="rerun the preprocessing stage for this fold (the folds changed since).",
        )

    def transformed(table: pd.DataFrame, transform: Any) -> Tensor:
        rows_of = table.assign(patient_id=table["patient_id"].astype(str)).set_index("patient_id")
        return torch.from_numpy(transform.transform(rows_of.reindex(list(patient_ids))))

    genomics = transformed(genomics_table, preprocessing.genomics)
    clinical = transformed(clinical_table, preprocessing.clinical)

    if use_wsi:
        bags, n_tiles_dim, encoder = _load_bags(patient_ids, features_dir, tables_dir)
    else:
        bags, n_tiles_dim, encoder = [torch.zeros((0, 1), dtype=torch.float16) for _ in patient_ids], 1, None
    logger.info(
        "fold %d: %s patients, %s, %d genomic and %d clinical features",
        fold,
        ", ".join(f"{int((splits == split).sum())} {split}" for split in SPLITS),
        f"{n_tiles_dim} tile-feature dims" if use_wsi else "no slides",
        genomics.shape[1],
        clinical.shape[1],
    )
    return FoldData(
        fold=fold,
        patient_ids=patient_ids,
        splits=splits,
        bags=bags,
        genomics=genomics,
        clinical=clinical,
        grade=grade,
        survival_bin=torch.from_numpy(survival_bin),
        censored=torch.from_numpy(censored.astype(np.float32)),
        grade_true=grade_true,
        survival_time=survival_time,
        event=event,
        n_tiles_dim=n_tiles_dim,
        preprocessing=preprocessing,
        bin_edges=bin_edges,
        grade_classes=grade_classes,
        encoder=encoder,
        tasks=tuple(tasks),
    )

"""One fold's patients: preprocessed genomics and clinical data, labels, and where their tile bags are.

Tables and labels are held in memory (a few numbers per patient); tile features stay in the HDF5
files and are read per patient when needed (:mod:`histofuse.training.bags`). Everything fitted from
data (the table preprocessing of :mod:`histofuse.preprocess`, survival bin edges) uses the fold's
**train** split only, so validation and test patients never leak into it.

Label columns of ``patients.parquet`` per task: ``grade`` and ``diagnosis`` (class indices, names in
``labels.json``), ``binary`` (a 0/1 column named by ``binary_label``, e.g. ``aln``), ``survival``
(``survival_time`` and ``event``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch import Tensor

from histofuse.errors import HistofuseError
from histofuse.losses import survival_bins, to_bin
from histofuse.models.registry import CLASSIFICATION_TASKS
from histofuse.preprocess import FoldPreprocessing, PreprocessSettings, fit_fold_preprocessing
from histofuse.training.bags import BagStore, empty_bag_store, open_bag_store

if TYPE_CHECKING:
    from histofuse.training.settings import TrainSettings

logger = logging.getLogger(__name__)

__all__ = [
    "SPLITS",
    "FoldData",
    "clinical_presence",
    "load_fold_data",
    "read_fold",
    "read_class_names",
    "read_grade_classes",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True, kw_only=True, eq=False)
class FoldData:
    """The patients of one fold, in ``patient_ids`` order (sorted).

    ``targets`` holds one training target per classification / binary task: class indices
    (``long``) or 0/1 (``float``), -1 where the label is missing. ``survival_bin`` is -1 where the
    survival label is missing; ``censored`` is 1 for censored patients. ``labels`` keeps the raw
    class / binary labels (``Int64``) for the predictions table, with ``survival_time`` and
    ``event``. ``bags`` finds each patient's tiles on disk.
    """

    fold: int
    patient_ids: tuple[str, ...]
    splits: npt.NDArray[np.str_]
    bags: BagStore
    genomics: Tensor
    clinical: Tensor
    clinical_present: Tensor
    targets: dict[str, Tensor]
    labels: dict[str, pd.Series]
    class_names: dict[str, list[str]]
    survival_bin: Tensor
    censored: Tensor
    survival_time: npt.NDArray[np.float64]
    event: pd.Series
    n_tiles_dim: int
    preprocessing: FoldPreprocessing
    bin_edges: npt.NDArray[np.float64] | None
    binary_label: str = "aln"
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
    def encoder(self) -> str | None:
        return self.bags.encoder

    @property
    def grade_classes(self) -> list[str]:
        return list(self.class_names.get("grade", []))

    @property
    def gene_groups(self) -> list[list[int]]:
        """Genomic column indices per gene group (after preprocessing)."""
        return [list(indices) for indices in self.preprocessing.genomic_groups.values()]

    def subspaces(self, mapping: dict[str, list[str]] | None) -> dict[str, list[int]]:
        """Genomic subspace → column indices: the union of the named gene groups of each subspace.

        ``mapping`` None: the gene groups named ``tumour`` and ``microenvironment``, where present.
        """
        groups = self.preprocessing.genomic_groups
        if mapping is None:
            mapping = {name: [name] for name in ("tumour", "microenvironment") if name in groups}
        resolved: dict[str, list[int]] = {}
        for subspace, names in mapping.items():
            unknown = [name for name in names if name not in groups]
            if unknown:
                raise HistofuseError(
                    f"subspace '{subspace}' names gene group(s) {unknown} that the genomic table of "
                    f"fold {self.fold} does not have (groups: {sorted(groups)}).",
                    column="training.subspaces",
                    fix="name groups of the gene,group list in training.subspaces.",
                )
            resolved[subspace] = sorted({index for name in names for index in groups[name]})
        return resolved

    def indices(self, split: str) -> npt.NDArray[np.int64]:
        """Row indices of the patients in ``split``."""
        return np.flatnonzero(self.splits == split).astype(np.int64)

    def mask(self, task: str) -> Tensor:
        """Boolean ``(P,)`` mask of patients whose label for ``task`` is known."""
        if task == "survival":
            return self.survival_bin >= 0
        if task in self.targets:
            return self.targets[task] >= 0
        raise KeyError(task)

    def has_label(self, index: int) -> bool:
        """Whether patient ``index`` has a label for at least one trained task."""
        return any(bool(self.mask(task)[index]) for task in self.tasks)


def read_grade_classes(tables_dir: Path) -> list[str] | None:
    """Grade class names from ``{tables_dir}/labels.json``; see :func:`read_class_names`."""
    return read_class_names(tables_dir, "grade")


def read_class_names(tables_dir: Path, label: str) -> list[str] | None:
    """Class names of ``label`` from ``{tables_dir}/labels.json`` (``{label: {"classes": [...]}}``).

    For grade a top-level ``"grade_classes"`` list is accepted too. Returns None when the file is
    absent, or when it does not describe ``label`` (other than grade, which must be described).
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
        entry = content.get(label)
        if isinstance(entry, dict):
            classes = entry.get("classes")
        if classes is None and label == "grade":
            classes = content.get("grade_classes")
        if classes is None and label != "grade":
            return None
    if not isinstance(classes, list) or not classes:
        raise HistofuseError(
            f"no {label} class list found.",
            path=path,
            fix=f'write {{"{label}": {{"classes": ["name of class 0", "name of class 1", ...]}}}}.',
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


def _read_patients(tables_dir: Path, tasks: Sequence[str], binary_label: str) -> pd.DataFrame:
    path = tables_dir / "patients.parquet"
    required = ["patient_id"]
    for task in CLASSIFICATION_TASKS:
        if task in tasks:
            required.append(task)
    if "binary" in tasks:
        required.append(binary_label)
    if "survival" in tasks:
        required += ["survival_time", "event"]
    table = _read_parquet(path, ["patient_id"])
    absent = [column for column in required if column not in table.columns]
    if absent:
        raise HistofuseError(
            f"the tasks {list(tasks)} need the label column(s) {absent}, which the patients table lacks.",
            path=path,
            fix="train only tasks whose labels the cohort has (training.tasks, training.binary_label).",
        )
    if table["patient_id"].duplicated().any():
        duplicate = table.loc[table["patient_id"].duplicated(), "patient_id"].iloc[0]
        raise HistofuseError(f"patient {duplicate!r} is listed twice.", path=path, column="patient_id")
    label_columns = [(name, "Int64") for name in (*CLASSIFICATION_TASKS, binary_label, "event")]
    for column, dtype in (*label_columns, ("survival_time", "float64")):
        if column not in table.columns:
            table[column] = pd.Series(pd.NA if dtype == "Int64" else np.nan, index=table.index, dtype=dtype)
        try:
            table[column] = table[column].astype(dtype)
        except (TypeError, ValueError) as exc:
            raise HistofuseError(f"values are not {dtype} ({exc}).", path=path, column=column) from None
    events = table["event"].dropna()
    if not events.isin([0, 1]).all():
        raise HistofuseError("event must be 0 (censored), 1 (death) or missing.", path=path, column="event")
    values = table[binary_label].dropna()
    if "binary" in tasks and not values.isin([0, 1]).all():
        raise HistofuseError("the binary label must be 0, 1 or missing.", path=path, column=binary_label)
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


def _class_target(
    labels: pd.DataFrame, task: str, classes: list[str], tables_dir: Path
) -> Tensor:
    values = labels[task].reset_index(drop=True)
    known = values.dropna()
    if len(known) and (known.min() < 0 or known.max() >= len(classes)):
        raise HistofuseError(
            f"{task} must be a class index in [0, {len(classes)}) (classes {classes}).",
            path=tables_dir / "patients.parquet",
            column=task,
        )
    return torch.tensor(values.fillna(-1).to_numpy(dtype=np.int64), dtype=torch.long)


def _classification_targets(
    patients: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    tasks: Sequence[str],
    tables_dir: Path,
    binary_label: str,
) -> tuple[dict[str, list[str]], dict[str, Tensor], dict[str, pd.Series]]:
    """Class names, targets (-1 = unknown) and raw labels of the classification and binary tasks."""
    class_names: dict[str, list[str]] = {}
    targets: dict[str, Tensor] = {}
    raw: dict[str, pd.Series] = {}
    for task in CLASSIFICATION_TASKS:
        classes = read_class_names(tables_dir, task)
        if classes is None:
            observed = patients[task].dropna()
            n_classes = int(observed.max()) + 1 if len(observed) else 0
            classes = [str(index) for index in range(n_classes)]
            if task in tasks:
                logger.warning("labels.json in %s does not describe %s; assuming %d classes", tables_dir, task, n_classes)
        raw[task] = labels[task].reset_index(drop=True)
        class_names[task] = classes
        if task in tasks:
            targets[task] = _class_target(labels, task, classes, tables_dir)
    if "binary" in tasks:
        raw["binary"] = labels[binary_label].reset_index(drop=True)
        targets["binary"] = torch.tensor(raw["binary"].fillna(-1).to_numpy(dtype=np.float32))
        class_names["binary"] = read_class_names(tables_dir, binary_label) or ["0", "1"]
    return class_names, targets, raw


@dataclass(frozen=True)
class _Survival:
    time: npt.NDArray[np.float64]
    event: pd.Series
    bin_edges: npt.NDArray[np.float64] | None
    bins: npt.NDArray[np.int64]
    censored: npt.NDArray[np.float64]


def _survival_targets(labels: pd.DataFrame, train_rows: np.ndarray, *, tasks: Sequence[str], n_bins: int) -> _Survival:
    """Survival times, events, the bins fitted on the training part and each patient's bin."""
    survival_time = labels["survival_time"].to_numpy(dtype=np.float64, na_value=np.nan)
    event = labels["event"].reset_index(drop=True)
    event_float = event.to_numpy(dtype=np.float64, na_value=np.nan)
    known_survival = np.isfinite(survival_time) & np.isfinite(event_float)
    bin_edges: npt.NDArray[np.float64] | None = None
    survival_bin = np.full(len(labels), -1, dtype=np.int64)
    if "survival" in tasks:
        bin_edges = survival_bins(survival_time[train_rows], event_float[train_rows], n_bins=n_bins)
        survival_bin = np.where(known_survival, to_bin(survival_time, bin_edges), -1)
    censored = np.where(known_survival, 1.0 - event_float, 0.0)
    return _Survival(time=survival_time, event=event, bin_edges=bin_edges, bins=survival_bin, censored=censored)


def _checked_preprocessing(
    preprocessing: FoldPreprocessing | None,
    *,
    fold: int,
    rows: pd.DataFrame,
    train_ids: tuple[str, ...],
    tables: tuple[pd.DataFrame, pd.DataFrame],
    tables_dir: Path,
    folds_tsv: Path,
) -> FoldPreprocessing:
    """``preprocessing``, or one fitted with default settings; refused if fitted on other patients."""
    genomics_table, clinical_table = tables
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
    if tuple(preprocessing.train_patients) != train_ids:
        raise HistofuseError(
            f"the preprocessing of fold {fold} was fitted on other training patients than the fold's.",
            path=folds_tsv,
            fix="rerun the preprocessing stage for this fold (the folds changed since).",
        )
    return preprocessing


def _transformed(table: pd.DataFrame, transform: Any, patient_ids: Sequence[str]) -> Tensor:
    rows_of = table.assign(patient_id=table["patient_id"].astype(str)).set_index("patient_id")
    return torch.from_numpy(transform.transform(rows_of.reindex(list(patient_ids))))


def _fold_labels(
    tables_dir: Path, folds_tsv: Path, fold: int, patient_ids: tuple[str, ...], *, tasks: Sequence[str], binary_label: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The patients table and its rows for ``patient_ids`` (an error if one is missing)."""
    patients = _read_patients(tables_dir, tasks, binary_label)
    unknown = [patient for patient in patient_ids if patient not in patients.index]
    if unknown:
        raise HistofuseError(
            f"{len(unknown)} patient(s) of fold {fold} are not in patients.parquet (first: {unknown[0]!r}).",
            path=folds_tsv,
            column="patient_id",
            fix="rebuild folds.tsv from the current patient table.",
        )
    return patients, patients.loc[list(patient_ids)]


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
    binary_label: str = "aln",
) -> FoldData:
    """Load the tables of ``fold`` and index its bags; preprocess the tables with ``preprocessing``.

    ``preprocessing`` is the fold's fitted transform (from the preprocessing stage); when None it
    is fitted here, with default settings, on the fold's train split. ``use_wsi=False`` trains
    without slides (every bag empty). ``binary_label``: the patients-table column of the binary task.
    """
    features_dir, tables_dir = Path(features_dir), Path(tables_dir)
    rows = read_fold(folds_tsv, fold).sort_values("patient_id", kind="stable").reset_index(drop=True)
    patient_ids = tuple(rows["patient_id"].tolist())
    splits = rows["split"].to_numpy(dtype=str)
    train_rows = splits == "train"
    patients, labels = _fold_labels(tables_dir, folds_tsv, fold, patient_ids, tasks=tasks, binary_label=binary_label)
    class_names, targets, raw = _classification_targets(
        patients, labels, tasks=tasks, tables_dir=tables_dir, binary_label=binary_label
    )
    for task, target in targets.items():
        if not bool((target[torch.from_numpy(train_rows)] >= 0).any()):
            raise HistofuseError(
                f"no training patient of fold {fold} has a label for the {task} task.",
                path=tables_dir / "patients.parquet",
            )
    survival = _survival_targets(labels, train_rows, tasks=tasks, n_bins=n_bins)
    genomics_table = _read_genomics(tables_dir).reset_index()
    clinical_table = _read_table(tables_dir, "clinical")
    train_ids = tuple(sorted(np.asarray(patient_ids)[train_rows].tolist()))
    preprocessing = _checked_preprocessing(
        preprocessing, fold=fold, rows=rows, train_ids=train_ids, tables=(genomics_table, clinical_table),
        tables_dir=tables_dir, folds_tsv=folds_tsv,
    )
    genomics = _transformed(genomics_table, preprocessing.genomics, patient_ids)
    clinical = _transformed(clinical_table, preprocessing.clinical, patient_ids)
    clinical_present = clinical_presence(clinical_table, patient_ids, preprocessing.clinical.input_columns)
    bags = open_bag_store(patient_ids, _slides_by_patient(tables_dir), features_dir) if use_wsi else empty_bag_store(len(patient_ids))
    logger.info(
        "fold %d: %s patients, %s, %d genomic and %d clinical features (clinical data for %d of %d patients)",
        fold,
        ", ".join(f"{int((splits == split).sum())} {split}" for split in SPLITS),
        f"{bags.n_dim} tile-feature dims" if use_wsi else "no slides",
        genomics.shape[1],
        clinical.shape[1],
        int(clinical_present.sum()),
        len(patient_ids),
    )
    return FoldData(
        fold=fold,
        patient_ids=patient_ids,
        splits=splits,
        bags=bags,
        genomics=genomics,
        clinical=clinical,
        clinical_present=clinical_present,
        targets=targets,
        labels=raw,
        class_names=class_names,
        survival_bin=torch.from_numpy(survival.bins),
        censored=torch.from_numpy(survival.censored.astype(np.float32)),
        survival_time=survival.time,
        event=survival.event,
        n_tiles_dim=bags.n_dim,
        preprocessing=preprocessing,
        bin_edges=survival.bin_edges,
        binary_label=binary_label,
        tasks=tuple(tasks),
    )


def load_fold_for(
    settings: TrainSettings,
    *,
    fold: int,
    features_dir: Path,
    tables_dir: Path,
    folds_tsv: Path,
    preprocessing: Path | None,
    use_wsi: bool,
) -> FoldData:
    """:func:`load_fold_data` with the tasks, bins and binary label of a model's training settings
    and the fold's preprocessing read from its JSON file (None: fitted on the fold's train split)."""
    return load_fold_data(
        fold=fold,
        features_dir=Path(features_dir),
        tables_dir=Path(tables_dir),
        folds_tsv=Path(folds_tsv),
        tasks=settings.tasks,
        n_bins=settings.n_bins,
        preprocessing=None if preprocessing is None else FoldPreprocessing.read(preprocessing),
        use_wsi=use_wsi,
        binary_label=settings.binary_label,
    )


def clinical_presence(table: pd.DataFrame, patient_ids: Sequence[str], columns: Sequence[str]) -> Tensor:
    """Boolean ``(P,)``: which of ``patient_ids`` have clinical data, from the raw (unimputed) table.

    A patient has clinical data when the table has a row for them with at least one value (a finite
    number or a non-empty text) in ``columns``, the clinical columns the fold's models read. A
    patient without a row, or whose row is empty in every such column, has none: the imputed row
    the preprocessing gives them carries no information about them.
    """
    if not columns:
        return torch.zeros(len(patient_ids), dtype=torch.bool)
    rows = table.assign(patient_id=table["patient_id"].astype(str)).set_index("patient_id")
    values = rows.reindex(list(patient_ids))[list(columns)]
    given = np.zeros(len(patient_ids), dtype=bool)
    for column in columns:
        series = values[column]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            given |= np.isfinite(series.to_numpy(dtype=np.float64, na_value=np.nan))
        else:
            text = series.astype("string").str.strip()
            given |= (text.notna() & (text != "")).to_numpy(dtype=bool, na_value=False)
    return torch.from_numpy(given)


def imputed_clinical_row(preprocessing: FoldPreprocessing) -> Tensor:
    """The clinical input of a patient whose clinical data are all missing: ``(C,)``.

    The fold's clinical transform imputes it with the training part's statistics (medians, modes)
    and sets its missing indicators, as for any patient without clinical data.
    """
    transform = preprocessing.clinical
    empty = pd.DataFrame({name: [np.nan] for name in transform.input_columns}, index=["missing"])
    return torch.from_numpy(transform.transform(empty))[0]

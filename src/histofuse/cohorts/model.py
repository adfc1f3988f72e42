"""The canonical cohort: what every reader returns, checked once here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import pandas as pd
from pandas.api.types import is_integer_dtype

from histofuse.cohorts.checks import id_list
from histofuse.cohorts.labels import BINARY_LABELS, LABEL_COLUMNS, TEXT_LABELS
from histofuse.errors import ConfigError

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


def _fail(source: str, table: str, problem: str, column: str | None = None) -> NoReturn:
    raise ConfigError(
        f"{source} cohort, {table} table: {problem}",
        column=column,
        fix="build the frames as the CohortTables docstring describes (column names, dtypes, known patient ids).",
    )


def _check_ids(frame: pd.DataFrame, column: str, *, source: str, table: str, unique: bool = True) -> None:
    if column not in frame.columns:
        _fail(source, table, f"no '{column}' column.", column)
    ids = frame[column]
    if ids.isna().any() or not all(isinstance(v, str) and v for v in ids):
        _fail(source, table, f"'{column}' must hold non-empty text ids.", column)
    if unique and ids.duplicated().any():
        _fail(source, table, f"duplicate ids: {id_list(ids[ids.duplicated()])}.", column)


def _check_known(frame: pd.DataFrame, known: pd.Index, *, source: str, table: str) -> None:
    unknown = ~frame["patient_id"].isin(known)
    if unknown.any():
        _fail(
            source, table, f"patients not in the patients table: {id_list(frame['patient_id'][unknown].unique())}.", "patient_id"
        )


def _check_binary(values: pd.Series, *, source: str, table: str, column: str) -> None:
    if values.dtype != "Int64" or not values.dropna().isin([0, 1]).all():
        _fail(source, table, f"'{column}' must be nullable 0/1 integers (Int64).", column)


def _check_float(values: pd.Series, *, source: str, table: str, column: str) -> None:
    if values.dtype != np.float64 or np.isinf(values.to_numpy()).any():
        kinds = "float64 or pandas 'string'" if table == "clinical" else "float64"
        _fail(source, table, f"'{column}' must be {kinds} without infinite values (found {values.dtype}).", column)


@dataclass(frozen=True, kw_only=True)
class CohortTables:
    """A cohort in the canonical frames, whatever format it was read from.

    ``patients``: ``patient_id`` (text) and the labels the source provides — ``grade`` ("2"/"3"/"4"),
    ``diagnosis`` (WHO 2021 family), ``subtype`` (IDHwt / IDHmut-non-codel / IDHmut-codel) as
    ``string``; ``molecular_grade4``, ``event`` and ``aln`` as Int64 0/1; ``survival_months``
    float64. Any label may be missing per patient; a label the source lacks is no column.
    ``genomics``: ``patient_id`` + float64 columns. ``clinical``: ``patient_id`` + float64 or
    ``string`` columns. ``slides``: ``slide_id, patient_id``. ``gene_groups``: ``gene, group`` (a
    gene may belong to several groups). ``splits``: ``patient_id, fold, split`` with split in
    train / val / test. ``source``: the format read. ``notes``: what reading changed in the
    user's values (one line each), for the preparation log and the report.
    """

    patients: pd.DataFrame
    genomics: pd.DataFrame | None = None
    clinical: pd.DataFrame | None = None
    slides: pd.DataFrame | None = None
    gene_groups: pd.DataFrame | None = None
    splits: pd.DataFrame | None = None
    source: str
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError("a cohort needs a non-empty source (format) name.", fix="pass source='<format>'.")
        source = self.source
        self._check_patients()
        known = pd.Index(self.patients["patient_id"])
        for name, frame in (("genomics", self.genomics), ("clinical", self.clinical)):
            if frame is None:
                continue
            _check_ids(frame, "patient_id", source=source, table=name)
            _check_known(frame, known, source=source, table=name)
            for column in frame.columns.drop("patient_id"):
                values = frame[column]
                if name == "clinical" and values.dtype == "string":
                    continue
                _check_float(values, source=source, table=name, column=str(column))
        if self.slides is not None:
            if list(self.slides.columns) != ["slide_id", "patient_id"]:
                _fail(source, "slides", f"columns must be slide_id, patient_id (found {list(self.slides.columns)}).")
            _check_ids(self.slides, "slide_id", source=source, table="slides")
            _check_ids(self.slides, "patient_id", source=source, table="slides", unique=False)
            _check_known(self.slides, known, source=source, table="slides")
        if self.gene_groups is not None:
            if list(self.gene_groups.columns) != ["gene", "group"]:
                _fail(source, "gene groups", f"columns must be gene, group (found {list(self.gene_groups.columns)}).")
            if self.gene_groups.isna().any().any() or self.gene_groups.duplicated().any():
                _fail(source, "gene groups", "missing or repeated (gene, group) pairs.")
        if self.splits is not None:
            self._check_splits(known)

    def _check_patients(self) -> None:
        source, patients = self.source, self.patients
        _check_ids(patients, "patient_id", source=source, table="patients")
        unknown = [c for c in patients.columns if c != "patient_id" and c not in LABEL_COLUMNS]
        if unknown:
            _fail(source, "patients", f"unknown label column(s) {unknown}; known: {', '.join(LABEL_COLUMNS)}.")
        for column, allowed in TEXT_LABELS.items():
            if column in patients.columns:
                values = patients[column]
                if values.dtype != "string" or not values.dropna().isin(allowed).all():
                    _fail(source, "patients", f"'{column}' must be pandas 'string' with values in {allowed}.", column)
        for column in BINARY_LABELS:
            if column in patients.columns:
                _check_binary(patients[column], source=source, table="patients", column=column)
        if "survival_months" in patients.columns:
            values = patients["survival_months"]
            _check_float(values, source=source, table="patients", column="survival_months")
            if (values < 0).any():
                _fail(source, "patients", "negative survival_months.", "survival_months")

    def _check_splits(self, known: pd.Index) -> None:
        splits, source = self.splits, self.source
        assert splits is not None
        if list(splits.columns) != ["patient_id", "fold", "split"]:
            _fail(source, "splits", f"columns must be patient_id, fold, split (found {list(splits.columns)}).")
        _check_ids(splits, "patient_id", source=source, table="splits", unique=False)
        _check_known(splits, known, source=source, table="splits")
        if not is_integer_dtype(splits["fold"].dtype) or (splits["fold"] < 0).any():
            _fail(source, "splits", "'fold' must hold non-negative integers.", "fold")
        if not splits["split"].isin(SPLIT_NAMES).all():
            _fail(source, "splits", f"'split' must be one of {SPLIT_NAMES}.", "split")
        if splits.duplicated(["patient_id", "fold"]).any():
            _fail(source, "splits", "a patient appears twice in one fold.", "patient_id")

    @property
    def label_columns(self) -> tuple[str, ...]:
        """The labels this cohort provides (columns of ``patients`` other than ``patient_id``)."""
        return tuple(c for c in self.patients.columns if c != "patient_id")

"""Any wide table (one row per patient, or per slide) read through a column map.

The map names, for each canonical role, the user's column: ids, grade, subtype, survival time
with its unit and an event or censoring indicator, genomic columns chosen by prefix and/or
suffix, and clinical columns declared numeric or categorical. Columns the map does not name are
not read. With a ``slide_id`` column the table has one row per slide; every patient-level value
must then agree across a patient's rows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from histofuse.cohorts.checks import (
    numeric_columns,
    one_row_per_patient,
    patient_ids,
    require_columns,
    text_column,
)
from histofuse.cohorts.labels import (
    LABEL_COLUMNS,
    MONTHS_PER_UNIT,
    event_indicator,
    parse_grade,
    parse_subtype,
    survival_months,
)
from histofuse.cohorts.model import CohortTables
from histofuse.cohorts.reading import read_table
from histofuse.errors import ConfigError

log = logging.getLogger(__name__)

SOURCE = "generic"
_SINGLE = ("patient_id", "slide_id", "grade", "subtype", "survival_time", "event", "censored")
_LISTS = ("genomic_suffixes", "clinical_numeric", "clinical_categorical")


def _map_error(problem: str, key: str | None, fix: str) -> ConfigError:
    return ConfigError(f"column map: {problem}", column=key, fix=fix)


@dataclass(frozen=True, kw_only=True)
class ColumnMap:
    """Which of the user's columns plays which canonical role (None / empty = the table has none).

    ``survival_time`` needs ``time_unit`` (days, months or years) and exactly one of ``event``
    (1 = death observed) or ``censored`` (1 = alive at last follow-up). Genomic columns are those
    starting with ``genomic_prefix`` (when set) and ending with one of ``genomic_suffixes`` (when
    set); with neither set the cohort has no genomics. Clinical columns are listed by kind.
    """

    patient_id: str
    slide_id: str | None = None
    grade: str | None = None
    subtype: str | None = None
    survival_time: str | None = None
    time_unit: str | None = None
    event: str | None = None
    censored: str | None = None
    genomic_prefix: str | None = None
    genomic_suffixes: tuple[str, ...] = ()
    clinical_numeric: tuple[str, ...] = ()
    clinical_categorical: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key in (*_SINGLE, "time_unit", "genomic_prefix"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise _map_error(f"'{key}' must be a column name (got {value!r}).", key, "give the column's header text.")
        for key in _LISTS:
            value = getattr(self, key)
            if value is None or isinstance(value, str) or not all(isinstance(v, str) and v.strip() for v in value):
                raise _map_error(
                    f"'{key}' must be a list of column names (got {value!r}).", key, "write a list, e.g. [age, sex]."
                )
            object.__setattr__(self, key, tuple(value))
        if self.survival_time is None:
            for key in ("time_unit", "event", "censored"):
                if getattr(self, key) is not None:
                    raise _map_error(
                        f"'{key}' is set but 'survival_time' is not.", key, "map 'survival_time' too, or remove the key."
                    )
        else:
            if self.time_unit not in MONTHS_PER_UNIT:
                raise _map_error(
                    f"'time_unit' must be one of {', '.join(MONTHS_PER_UNIT)} (got {self.time_unit!r}).",
                    "time_unit",
                    "state the unit of the survival time column.",
                )
            if (self.event is None) == (self.censored is None):
                raise _map_error(
                    "'survival_time' needs exactly one of 'event' or 'censored'.",
                    "event",
                    "map 'event' (1 = death observed) or 'censored' (1 = alive at last follow-up), not both.",
                )
        named = self.named_columns()
        repeated = sorted({c for c in named if named.count(c) > 1})
        if repeated:
            raise _map_error(f"columns used for two roles: {', '.join(repeated)}.", None, "give every column one role.")

    def named_columns(self) -> list[str]:
        """Every column named explicitly (ids, labels, clinical), in map order."""
        single = [getattr(self, key) for key in _SINGLE if getattr(self, key) is not None]
        return [*single, *self.clinical_numeric, *self.clinical_categorical]

    def selects_genomics(self) -> bool:
        """Whether genomic columns are chosen at all."""
        return self.genomic_prefix is not None or bool(self.genomic_suffixes)

    def genomic_columns(self, columns: Sequence[str]) -> list[str]:
        """The columns (other than the named ones) that match the prefix and suffix selection."""
        if not self.selects_genomics():
            return []
        named = set(self.named_columns())
        return [
            c
            for c in columns
            if c not in named
            and (self.genomic_prefix is None or c.startswith(self.genomic_prefix))
            and (not self.genomic_suffixes or c.endswith(self.genomic_suffixes))
        ]

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> ColumnMap:
        """Build from a plain mapping (a config section); unknown keys raise ConfigError."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(mapping) - set(allowed))
        if unknown:
            raise _map_error(f"unknown key(s) {', '.join(unknown)}.", unknown[0], f"use only: {', '.join(allowed)}.")
        if "patient_id" not in mapping:
            raise _map_error("'patient_id' is required.", "patient_id", "name the patient identifier column.")
        return cls(**dict(mapping))


def read_generic(path: str | Path, column_map: ColumnMap | Mapping[str, Any], *, sep: str | None = None) -> CohortTables:
    """Read a wide table through ``column_map`` into canonical frames (sorted by patient id).

    ``sep`` overrides the separator implied by the file name (.csv comma, .tsv/.txt tab).
    """
    path = Path(path)
    spec = column_map if isinstance(column_map, ColumnMap) else ColumnMap.from_mapping(column_map)
    table = read_table(path, sep=sep)
    require_columns(table, spec.named_columns(), path=path, what="table")
    genomic = spec.genomic_columns(list(table.columns))
    if spec.selects_genomics() and not genomic:
        raise ConfigError(
            f"no column matches the genomic selection (prefix {spec.genomic_prefix!r}, suffixes {list(spec.genomic_suffixes)}).",
            path=path,
            row=1,
            fix="correct genomic_prefix / genomic_suffixes, or remove them when the table has no genomics.",
        )
    reserved = ("patient_id", *LABEL_COLUMNS)
    clashing = [c for c in [*spec.clinical_numeric, *spec.clinical_categorical, *genomic] if c in reserved]
    if clashing:
        raise ConfigError(
            f"clinical or genomic column(s) named like canonical columns: {', '.join(clashing)}.",
            path=path,
            row=1,
            fix=f"rename them in the table (reserved names: {', '.join(reserved)}), or map them to their role.",
        )
    per_slide = spec.slide_id is not None
    ids = patient_ids(table, spec.patient_id, path=path, unique=not per_slide)

    rows = pd.DataFrame({"patient_id": ids}, index=table.index)
    if spec.grade is not None:
        rows["grade"] = parse_grade(table[spec.grade], path=path, column=spec.grade, ids=ids)
    if spec.subtype is not None:
        rows["subtype"] = parse_subtype(table[spec.subtype], path=path, column=spec.subtype, ids=ids)
    if spec.survival_time is not None:
        assert spec.time_unit is not None
        rows["survival_months"] = survival_months(
            table[spec.survival_time], unit=spec.time_unit, path=path, column=spec.survival_time, ids=ids
        )
        indicator = spec.event or spec.censored
        assert indicator is not None
        rows["event"] = event_indicator(
            event=None if spec.event is None else table[spec.event],
            censored=None if spec.censored is None else table[spec.censored],
            path=path,
            column=indicator,
            ids=ids,
        )
    numbers = numeric_columns(table, [*spec.clinical_numeric, *genomic], path=path, ids=ids)
    for column in spec.clinical_numeric:
        rows[column] = numbers[column]
    for column in spec.clinical_categorical:
        rows[column] = text_column(table[column])
    for column in genomic:
        rows[column] = numbers[column]
    rows = rows.copy()

    slides = None
    if per_slide:
        assert spec.slide_id is not None
        slide_ids = patient_ids(table, spec.slide_id, path=path)
        slides = pd.DataFrame({"slide_id": slide_ids, "patient_id": ids}).sort_values("slide_id").reset_index(drop=True)
        rows = one_row_per_patient(rows, patient_column="patient_id", path=path)
    rows = rows.sort_values("patient_id").reset_index(drop=True)

    patients = rows[["patient_id"] + [c for c in LABEL_COLUMNS if c in rows.columns]].copy()
    clinical_columns = [*spec.clinical_numeric, *spec.clinical_categorical]
    clinical = rows[["patient_id", *clinical_columns]].copy() if clinical_columns else None
    genomics = rows[["patient_id", *genomic]].copy() if genomic else None
    log.info(
        "%s: %d patients, %d genomic and %d clinical columns%s",
        path,
        len(patients),
        len(genomic),
        len(clinical_columns),
        f", {len(slides)} slides" if slides is not None else "",
    )
    return CohortTables(patients=patients, genomics=genomics, clinical=clinical, slides=slides, source=SOURCE)

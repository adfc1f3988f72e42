"""Typing and checking of text columns read by :mod:`histofuse.cohorts.reading`.

Every function takes the frames as read (indexed by file row number, header = row 1) and raises
ConfigError naming the file, the column, the offending rows with their ids, and the fix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histofuse.cohorts.reading import PADDED
from histofuse.errors import ConfigError

log = logging.getLogger(__name__)

ROW_LIMIT = 10
"""How many offending rows an error message lists before summarising the rest."""


def row_list(rows: Iterable[Hashable], ids: pd.Series | None = None, values: pd.Series | None = None) -> str:
    """``row 5 (TCGA-02-0001) = 'abc', row 9 (…)``: file rows with their ids (and the bad values)."""
    rows = list(rows)
    parts = []
    for row in rows[:ROW_LIMIT]:
        text = f"row {row}"
        if ids is not None:
            text += f" ({ids.get(row)})"
        if values is not None:
            text += f" = {values.get(row)!r}"
        parts.append(text)
    more = f" … and {len(rows) - ROW_LIMIT} more" if len(rows) > ROW_LIMIT else ""
    return ", ".join(parts) + more


def id_list(ids: Iterable[Any]) -> str:
    """Up to ten ids, then a count of the rest."""
    ids = [str(i) for i in ids]
    more = f" … and {len(ids) - ROW_LIMIT} more" if len(ids) > ROW_LIMIT else ""
    return ", ".join(ids[:ROW_LIMIT]) + more


def require_columns(frame: pd.DataFrame, columns: Sequence[str], *, path: Path | str, what: str) -> None:
    """Raise ConfigError naming every required column the table lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        found = ", ".join(repr(c) for c in frame.columns)
        raise ConfigError(
            f"the {what} lacks column(s) {', '.join(repr(c) for c in missing)} (found: {found}).",
            path=path,
            row=1,
            fix=f"use the {what} as published, or name the columns {', '.join(repr(c) for c in columns)}.",
        )


def patient_ids(frame: pd.DataFrame, column: str, *, path: Path | str, unique: bool = True) -> pd.Series:
    """The id column as text; missing ids (and duplicates when ``unique``) raise ConfigError.

    Ids that had surrounding whitespace in the file (stripped by :func:`read_table`) are logged as a
    warning, quoted as written, with their rows.
    """
    ids = frame[column]
    missing = ids.isna()
    if missing.any():
        raise ConfigError(
            f"rows without an id: {row_list(ids.index[missing])}.",
            path=path,
            column=column,
            fix="fill in the id or delete the rows.",
        )
    ids = ids.astype(str)
    padded = frame.attrs.get(PADDED, {}).get(column, {})
    if padded:
        log.warning(
            "%s: column '%s': surrounding whitespace removed from %d id(s): %s",
            path,
            column,
            len(padded),
            ", ".join(f"{text!r} (row {row})" for row, text in list(padded.items())[:ROW_LIMIT])
            + (f" … and {len(padded) - ROW_LIMIT} more" if len(padded) > ROW_LIMIT else ""),
        )
    if unique:
        duplicated = ids.duplicated(keep=False)
        if duplicated.any():
            raise ConfigError(
                f"duplicate ids: {row_list(ids.index[duplicated], ids)}.",
                path=path,
                column=column,
                fix="keep one row per id (merge or delete the repeated rows).",
            )
    return ids


def _raise_bad_cells(
    bad: Mapping[str, pd.Index], raw: pd.DataFrame, ids: pd.Series | None, *, path: Path | str | None, problem: str, fix: str
) -> None:
    bad = {column: rows for column, rows in bad.items() if len(rows)}
    if not bad:
        return
    details = "; ".join(f"'{column}' at {row_list(rows, ids, raw[column])}" for column, rows in bad.items())
    only = next(iter(bad)) if len(bad) == 1 else None
    raise ConfigError(f"{problem}: {details}.", path=path, column=only, fix=fix)


def numeric_columns(
    frame: pd.DataFrame, columns: Sequence[str], *, path: Path | str | None, ids: pd.Series | None = None
) -> pd.DataFrame:
    """Finite float64 columns; text, ``NaN`` and ``inf`` cells raise ConfigError listing every one."""
    parsed: dict[str, pd.Series] = {}
    bad: dict[str, pd.Index] = {}
    for column in columns:
        raw = frame[column]
        values = pd.to_numeric(raw, errors="coerce").astype("float64")
        wrong = raw.notna() & ~np.isfinite(values)
        bad[column] = raw.index[wrong]
        parsed[column] = values
    _raise_bad_cells(
        bad,
        frame,
        ids,
        path=path,
        problem="non-numeric, NaN or infinite values in numeric column(s)",
        fix="write numbers; leave a cell empty (or NA) when the value is missing.",
    )
    return pd.DataFrame(parsed, index=frame.index, columns=list(columns))


def binary_column(values: pd.Series, *, path: Path | str | None, column: str, ids: pd.Series | None = None) -> pd.Series:
    """Nullable 0/1 (Int64) from 0/1 cells (``1.0`` and booleans accepted); anything else raises."""

    def parse(value: Any) -> float | None:
        if pd.isna(value):
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            return np.nan
        return number if number in (0.0, 1.0) else np.nan

    parsed = [parse(v) for v in values]
    wrong = [v is not None and np.isnan(v) for v in parsed]
    if any(wrong):
        raise ConfigError(
            f"values other than 0/1: {row_list(values.index[wrong], ids, values)}.",
            path=path,
            column=column,
            fix="write 0 or 1; leave a cell empty (or NA) when the value is missing.",
        )
    return pd.Series(pd.array([None if v is None else int(v) for v in parsed], dtype="Int64"), index=values.index)


def choice_column(
    values: pd.Series,
    normalise: Callable[[str], str | None],
    *,
    path: Path | str | None,
    column: str,
    allowed: Sequence[str],
    ids: pd.Series | None = None,
) -> pd.Series:
    """Map text cells through ``normalise`` (None = unknown value → ConfigError); missing stays NA."""
    mapped = [None if pd.isna(v) else normalise(str(v)) for v in values]
    unknown = [row for row, value, new in zip(values.index, values, mapped, strict=True) if not pd.isna(value) and new is None]
    if unknown:
        raise ConfigError(
            f"unknown values: {row_list(unknown, ids, values)}.",
            path=path,
            column=column,
            fix=f"use one of {', '.join(repr(a) for a in allowed)}; leave a cell empty (or NA) when it is unknown.",
        )
    return pd.Series(pd.array(mapped, dtype="string"), index=values.index)


def one_row_per_patient(frame: pd.DataFrame, *, patient_column: str, path: Path | str) -> pd.DataFrame:
    """Collapse a one-row-per-slide frame to its first row per patient, checking the rows agree.

    ``frame`` holds typed patient-level columns (numbers or text, missing = NA) plus the patient
    column; every patient's rows must carry identical values in all other columns (missing equals
    missing). The result keeps the first row's file row number as its index.
    """
    columns = [c for c in frame.columns if c != patient_column]
    if columns:
        counts = frame.groupby(patient_column, sort=False)[columns].nunique(dropna=False)
        disagree = counts.gt(1)
        patients = disagree.index[disagree.any(axis=1)]
        if len(patients):
            details = []
            for patient in patients[:ROW_LIMIT]:
                rows = frame.index[frame[patient_column] == patient]
                differing = [c for c in columns if disagree.at[patient, c]]
                shown = ", ".join(differing[:5]) + (f" … and {len(differing) - 5} more" if len(differing) > 5 else "")
                details.append(f"{patient} (rows {', '.join(map(str, rows))}: {shown})")
            more = f" … and {len(patients) - ROW_LIMIT} more" if len(patients) > ROW_LIMIT else ""
            raise ConfigError(
                f"patient-level values differ between the rows of the same patient: {'; '.join(details)}{more}.",
                path=path,
                column=patient_column,
                fix="make the patient-level columns identical on every row of a patient (they describe the patient, "
                "not the slide), or correct the patient ids.",
            )
    return frame.loc[~frame[patient_column].duplicated(keep="first")]


def text_column(values: pd.Series) -> pd.Series:
    """A categorical text column as pandas ``string`` (missing = NA)."""
    return values.astype("string")

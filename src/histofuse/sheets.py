"""Sample sheets (slides, patients): read them as text, one rule for missing cells, check them row by row.

Every sheet and cohort table (:mod:`histofuse.cohorts.reading` for the published formats) treats
an empty cell and ``NA`` (:data:`MISSING_TOKENS`) as missing; a column named twice is an error;
surrounding whitespace is removed from the id columns with a warning quoting them.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pandas as pd

from histofuse.config import key_path, load_schema
from histofuse.errors import ConfigError

log = logging.getLogger(__name__)

MISSING_TOKENS: frozenset[str] = frozenset({"", "NA"})
"""Cell values that mean "missing" in every sheet and table histofuse reads (after stripping)."""

ID_COLUMNS: tuple[str, ...] = ("slide_id", "patient_id")
"""Identifier columns of histofuse's sheets and tables: surrounding whitespace is removed, with a note."""


def check_unique_columns(header: list[str], *, path: str | Path) -> None:
    """Refuse a header that names a column twice, naming each name and its column positions (1-based)."""
    positions: dict[str, list[int]] = {}
    for number, name in enumerate(header, start=1):
        positions.setdefault(name, []).append(number)
    repeated = [f"{name!r} (columns {', '.join(map(str, cols))})" for name, cols in positions.items() if len(cols) > 1]
    if repeated:
        raise ConfigError(
            f"duplicate column names: {'; '.join(repeated)}.",
            path=path,
            row=1,
            fix="give every column a unique name (rename or delete the repeated one).",
        )


def strip_ids(values: pd.Series, *, path: str | Path, column: str) -> pd.Series:
    """``values`` with surrounding whitespace removed from each id, logging every id that changed.

    The note quotes the ids as written (``'CMU-1 '``) with their file rows (header = row 1), so a
    stray space is visible. ``values`` is indexed by the frame's row position (0 = first data row).
    """
    text = values.astype("string")
    stripped = text.str.strip()
    changed = text.notna() & (text != stripped)
    if changed.any():
        shown = ", ".join(
            f"{str(text[i])!r} (row {position + 2})" for position, i in enumerate(values.index) if changed[i]
        )
        log.warning(
            "%s: column '%s': surrounding whitespace removed from %d id(s): %s",
            path,
            column,
            int(changed.sum()),
            shown,
        )
    return stripped.astype(object).where(text.notna(), np.nan)


def read_sheet(path: str | Path) -> pd.DataFrame:
    """Read a TSV or CSV sheet as strings (types are checked afterwards, row by row).

    A column named twice is an error. Surrounding whitespace is removed from the header names and
    from the id columns (:data:`ID_COLUMNS`), the latter with a warning naming the ids.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError("sheet does not exist.", path=path, fix="correct its path in the config.")
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        header = pd.read_csv(path, sep=sep, dtype=str, header=None, nrows=1, keep_default_na=False)
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=sorted(MISSING_TOKENS))
    except pd.errors.EmptyDataError as err:
        raise ConfigError("the sheet is empty.", path=path, fix="add a header line and rows.") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot parse the sheet ({err}).", path=path, fix="save it as UTF-8 tab-separated text.") from err
    names = [str(c).strip() for c in header.iloc[0]]
    check_unique_columns(names, path=path)
    frame.columns = names
    for column in ID_COLUMNS:
        if column in frame.columns:
            frame[column] = strip_ids(frame[column], path=path, column=column)
    return frame


def _coerce(value: Any, types: list[str]) -> Any:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if "number" in types or "integer" in types:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return value
        if not np.isfinite(number):  # NaN and inf are text to the schema, not numbers
            return value
        if "integer" in types and number.is_integer():
            return int(number)
        return number
    return value


def note_unread_columns(frame: pd.DataFrame, known: Sequence[str], *, path: str | Path) -> None:
    """Warn about columns of a sheet that the pipeline does not read (a misspelt label column's labels
    would otherwise be missing without a word), with the closest known name."""
    props = list(known)
    unread = [str(c) for c in frame.columns if str(c) not in props]
    if unread:
        closest = {name: difflib.get_close_matches(name, props, n=1) for name in unread}
        hints = [f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name) for name, close in closest.items()]
        log.warning(
            "%s: column(s) not read: %s; the sheet's columns are %s",
            path,
            ", ".join(hints),
            ", ".join(props),
        )


def validate_sheet(frame: pd.DataFrame, *, schema_path: str | Path, path: str | Path, id_column: str) -> pd.DataFrame:
    """Check every row of a sheet against a schema; errors name the row (1-based, header = row 1) and column."""
    schema = load_schema(schema_path)
    props: dict[str, Any] = schema.get("properties", {})
    missing = [c for c in schema.get("required", []) if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"required column(s) missing: {', '.join(missing)} (found: {', '.join(frame.columns)}).",
            path=path,
            fix=f"add the column(s); the sheet needs {', '.join(schema.get('required', []))}.",
        )
    validator = jsonschema.Draft7Validator(schema)
    problems: list[str] = []
    for index, row in frame.iterrows():
        record = {}
        for column, value in row.items():
            spec = props.get(str(column), {})
            types = spec.get("type", [])
            types = [types] if isinstance(types, str) else list(types)
            coerced = _coerce(value, types)
            if coerced is not None:
                record[str(column)] = coerced
        for error in validator.iter_errors(record):
            column = key_path(error) if error.absolute_path else None
            if error.validator == "required":
                column = error.message.split("'")[1]
            row_no = int(index) + 2
            ident = row.get(id_column)
            problems.append(f"  - row {row_no} ({id_column}={ident}), column '{column}': {error.message}")
    if problems:
        shown = problems[:20] + ([f"  … and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise ConfigError(
            "sheet has invalid values:\n" + "\n".join(shown),
            path=path,
            fix="correct the listed cells (see the schema's descriptions in workflow/schemas/).",
        )
    duplicated = frame[id_column][frame[id_column].duplicated(keep=False)]
    if not duplicated.empty:
        rows = ", ".join(f"row {i + 2} ({v})" for i, v in duplicated.items())
        raise ConfigError(
            f"duplicate {id_column} values: {rows}.",
            path=path,
            column=id_column,
            fix=f"give every row a unique {id_column}.",
        )
    return frame

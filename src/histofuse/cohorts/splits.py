"""Published split files → the folds frame ``patient_id, fold, split`` (split in train / val / test).

* PNAS / Pathomic Fusion (``pnas_splits.csv``): one row per patient, one column per repetition
  ("Randomization - 1" … "Randomization - 15") holding Train / Test. Repetition k becomes fold
  k − 1. These splits have no validation part and none is invented.
* MCAT / PORPOISE (``splits/splits_{k}.csv``): columns ``train`` and ``val`` listing case ids.
  MCAT's ``val`` is the held-out evaluation part, so it becomes ``test``; file k becomes fold k.

A patient named in a split file but absent from the cohort raises ConfigError listing the ids;
cohort patients left out of a fold are logged as a warning with their count.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from histofuse.cohorts.checks import id_list, patient_ids, require_columns, row_list
from histofuse.cohorts.reading import read_table
from histofuse.errors import ConfigError

log = logging.getLogger(__name__)

_REPETITION = re.compile(r"(\d+)\s*$")
_MCAT_FILE = re.compile(r"splits_(\d+)\.csv$", re.IGNORECASE)


def _finish(rows: list[tuple[str, int, str]], cohort: pd.Index, *, source: str) -> pd.DataFrame:
    folds = pd.DataFrame(rows, columns=["patient_id", "fold", "split"]).astype({"fold": "int64"})
    unknown = sorted(set(folds["patient_id"]) - set(cohort))
    if unknown:
        raise ConfigError(
            f"{len(unknown)} patient(s) in the splits are not in the cohort: {id_list(unknown)}.",
            path=source,
            fix="use the split file that belongs to this cohort table, or add the patients to the cohort.",
        )
    left_out = {int(fold): len(set(cohort) - set(part["patient_id"])) for fold, part in folds.groupby("fold", sort=True)}
    left_out = {fold: count for fold, count in left_out.items() if count}
    if left_out:
        log.warning(
            "%s: cohort patients in no part of a fold (fold: count): %s — they are not used in those folds",
            source,
            ", ".join(f"{fold}: {count}" for fold, count in left_out.items()),
        )
    return folds.sort_values(["fold", "split", "patient_id"]).reset_index(drop=True)


def read_pnas_splits(path: str | Path, cohort: pd.Index | Sequence[str]) -> pd.DataFrame:
    """Folds from a PNAS-style split table (any line endings): fold k − 1 for "Randomization - k"."""
    path = Path(path)
    table = read_table(path)
    id_column = table.columns[0]
    ids = patient_ids(table, id_column, path=path)
    repetitions = [c for c in table.columns[1:]]
    numbers = {}
    for column in repetitions:
        match = _REPETITION.search(column)
        if match is None:
            raise ConfigError(
                f"column {column!r} does not end in a repetition number.",
                path=path,
                row=1,
                fix="name the split columns like 'Randomization - 1' … 'Randomization - 15'.",
            )
        numbers[column] = int(match.group(1))
    if not numbers:
        raise ConfigError("no split columns.", path=path, row=1, fix="add the 'Randomization - k' columns.")
    if len(set(numbers.values())) != len(numbers):
        raise ConfigError(
            "two split columns carry the same repetition number.", path=path, row=1, fix="number them 1 … K once each."
        )
    first = min(numbers.values())
    rows: list[tuple[str, int, str]] = []
    for column, number in sorted(numbers.items(), key=lambda item: item[1]):
        values = table[column]
        parts = values.map(lambda v: v if pd.isna(v) else {"train": "train", "test": "test"}.get(str(v).lower()))
        wrong = values.notna() & parts.isna()
        if wrong.any():
            raise ConfigError(
                f"values other than Train/Test: {row_list(values.index[wrong], ids, values)}.",
                path=path,
                column=column,
                fix="write Train or Test; leave the cell empty for a patient not used in that repetition.",
            )
        rows.extend((ids[row], number - first, part) for row, part in parts.dropna().items())
    log.info("%s: %d repetitions (folds %d…%d)", path, len(numbers), 0, len(numbers) - 1)
    return _finish(rows, pd.Index(cohort), source=str(path))


def mcat_split_files(location: str | Path | Sequence[str | Path]) -> list[tuple[int, Path]]:
    """(fold, file) pairs: a folder's ``splits_{k}.csv`` by k, or the files given in order (fold = position)."""
    if isinstance(location, (str, Path)) and Path(location).is_dir():
        found = []
        for file in Path(location).iterdir():
            match = _MCAT_FILE.search(file.name)
            if match:
                found.append((int(match.group(1)), file))
        if not found:
            raise ConfigError("no splits_{k}.csv files in the folder.", path=location, fix="point to MCAT's splits folder.")
        return sorted(found)
    files = [Path(location)] if isinstance(location, (str, Path)) else [Path(f) for f in location]
    return list(enumerate(files))


def read_mcat_splits(location: str | Path | Sequence[str | Path], cohort: pd.Index | Sequence[str]) -> pd.DataFrame:
    """Folds from MCAT ``splits_{k}.csv`` files (``train`` → train, ``val`` → test)."""
    rows: list[tuple[str, int, str]] = []
    files = mcat_split_files(location)
    for fold, file in files:
        table = read_table(file)
        require_columns(table, ["train", "val"], path=file, what="MCAT split file")
        seen: dict[str, tuple[str, int]] = {}
        for column, part in (("train", "train"), ("val", "test")):
            for row, case in table[column].dropna().items():
                if case in seen:
                    other_column, other_row = seen[case]
                    raise ConfigError(
                        f"case {case} is listed twice (row {other_row} of '{other_column}' and row {row} of '{column}').",
                        path=file,
                        column=column,
                        fix="list every case once per split file.",
                    )
                seen[case] = (column, int(row))
                rows.append((str(case), fold, part))
    log.info("%s: %d split files", location, len(files))
    source = str(location) if isinstance(location, (str, Path)) else ", ".join(map(str, location))
    return _finish(rows, pd.Index(cohort), source=source)

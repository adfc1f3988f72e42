"""Published split files → the folds frame ``patient_id, fold, split`` (split in train / val / test).

* PNAS / Pathomic Fusion (``pnas_splits.csv``): one row per patient, one column per repetition
  ("Randomization - 1" … "Randomization - 15") holding Train / Test. Repetition k becomes fold
  k − 1. These splits have no validation part and none is invented.
* MCAT / PORPOISE (``splits/splits_{k}.csv``): columns ``train`` and ``val`` listing case ids.
  MCAT's ``val`` is the held-out evaluation part, so it becomes ``test``; file k becomes fold k.

* Any cohort (``folds.source: files``): a folds table ``patient_id, fold, split``, or id lists
  per split (one id per line; BCNB's ``train_id.txt`` / ``val_id.txt`` / ``test_id.txt``), which
  are one fixed split (fold 0).

A patient named in a split file but absent from the cohort raises ConfigError listing the ids;
cohort patients left out of a fold are logged as a warning with their count.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from histofuse.cohorts.checks import id_list, patient_ids, require_columns, row_list
from histofuse.cohorts.reading import read_table, read_text
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


# --- split files any cohort may give (folds.source: files) -------------------------------------

ID_LIST_PARTS: tuple[str, ...] = ("train", "val", "test")
"""``folds.files`` keys of the id lists (``val`` optional: then carved from ``train``)."""
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def split_file_kind(files: Mapping[str, str]) -> str:
    """``table`` (a folds table) or ``lists`` (ids per split); anything else raises ConfigError."""
    keys = set(files)
    if keys == {"table"}:
        return "table"
    if keys and keys <= set(ID_LIST_PARTS) and {"train", "test"} <= keys:
        return "lists"
    raise ConfigError(
        f"folds.files has keys {sorted(keys) or 'none'}.",
        column="folds.files",
        fix="give either 'table' (a patient_id, fold, split table) or 'train' and 'test' id lists "
        "(one id per line; 'val' optional).",
    )


def read_id_list(path: str | Path) -> list[str]:
    """The ids of an id-list file: one per line (any line endings), surrounding spaces and blank lines ignored."""
    ids = [line.strip() for line in read_text(path).split("\n")]
    return [i for i in ids if i]


def read_folds_table(path: str | Path, cohort: pd.Index | Sequence[str]) -> pd.DataFrame:
    """A ``patient_id, fold, split`` table (split: train / val / test, any case) as the folds frame."""
    path = Path(path)
    table = read_table(path)
    require_columns(table, ["patient_id", "fold", "split"], path=path, what="folds table")
    ids = patient_ids(table, "patient_id", path=path, unique=False)
    folds = pd.to_numeric(table["fold"], errors="coerce")
    bad_fold = folds.isna() | (folds < 0) | (folds % 1 != 0)
    if bad_fold.any():
        raise ConfigError(
            f"folds that are not whole numbers from 0: {row_list(table.index[bad_fold], ids, table['fold'])}.",
            path=path,
            column="fold",
            fix="number the folds 0, 1, 2 …",
        )
    parts = table["split"].map(lambda v: None if pd.isna(v) else _SPLIT_NAMES.get(str(v).strip().lower()))
    if parts.isna().any():
        raise ConfigError(
            f"splits other than train / val / test: {row_list(table.index[parts.isna()], ids, table['split'])}.",
            path=path,
            column="split",
            fix="write train, val or test in every row.",
        )
    twice = pd.DataFrame({"id": ids, "fold": folds}).duplicated(keep=False)
    if twice.any():
        raise ConfigError(
            f"a patient appears twice in one fold: {row_list(table.index[twice], ids)}.",
            path=path,
            column="patient_id",
            fix="give every patient one split per fold.",
        )
    rows = list(zip(ids, folds.astype(int), parts, strict=True))
    return _finish(rows, pd.Index(cohort), source=str(path))


def read_id_lists(files: Mapping[str, str | Path], cohort: pd.Index | Sequence[str]) -> pd.DataFrame:
    """One fixed split (fold 0) from id lists per part, e.g. BCNB's train_id.txt / val_id.txt / test_id.txt."""
    rows: list[tuple[str, int, str]] = []
    seen: dict[str, str] = {}
    for part in ID_LIST_PARTS:
        if part not in files:
            continue
        ids = read_id_list(files[part])
        if not ids:
            raise ConfigError(f"the {part} id list is empty.", path=files[part], fix="list one patient id per line.")
        for pid in ids:
            if pid in seen:
                raise ConfigError(
                    f"patient {pid} is listed in {seen[pid]} and in {files[part]}.",
                    path=files[part],
                    fix="list every patient in one split only.",
                )
            seen[pid] = str(files[part])
            rows.append((pid, 0, part))
    log.info("id lists: %s", ", ".join(f"{p} {sum(r[2] == p for r in rows)}" for p in ID_LIST_PARTS if p in files))
    return _finish(rows, pd.Index(cohort), source=", ".join(str(files[p]) for p in ID_LIST_PARTS if p in files))


def read_split_files(files: Mapping[str, str | Path], cohort: pd.Index | Sequence[str]) -> pd.DataFrame:
    """The folds frame from ``folds.files``: a folds table or id lists per split."""
    if split_file_kind({k: str(v) for k, v in files.items()}) == "table":
        return read_folds_table(files["table"], cohort)
    return read_id_lists(files, cohort)


def check_split_files(files: Mapping[str, str] | None, *, k: int, source: str | None = None) -> None:
    """Before any job: the files of ``folds.source: files`` exist, and ``folds.k`` fits them."""
    if not files:
        raise ConfigError(
            "folds.source is 'files' but folds.files is not set.",
            path=source,
            column="folds.files",
            fix="set folds.files.table (patient_id, fold, split) or folds.files.train / val / test (id lists).",
        )
    kind = split_file_kind(files)
    for key, file in files.items():
        if not Path(file).is_file():
            raise ConfigError(f"folds.files.{key} does not exist: {file}.", path=source, column=f"folds.files.{key}", fix="correct the path.")
    available = 1 if kind == "lists" else len(pd.unique(read_table(files["table"])["fold"].dropna()))
    if k > available:
        raise ConfigError(
            f"folds.k = {k} but the split files hold {available} fold(s)"
            + (" (id lists are one fixed split)" if kind == "lists" else "")
            + ".",
            path=source,
            column="folds.k",
            fix=f"set folds.k to at most {available}.",
        )

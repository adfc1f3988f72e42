"""Checks of the sample sheets against the file system and each other, run when the DAG is built.

Each problem found here stops the run before any job starts, with the sheet, the rows and the fix.
A slide file that does not exist is the exception under ``on_error: skip``: its slide is then
excluded by its tiling job (see :mod:`histofuse.exclusions`) and the other slides go on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from histofuse.errors import ConfigError

log = logging.getLogger(__name__)

_SHOWN = 10


def _rows(frame: pd.DataFrame, mask: pd.Series, *, detail: str | None = None) -> str:
    """``row N (slide_id[: detail])`` for the masked rows of a sheet (header = row 1), at most 10."""
    rows = []
    for position, (_, row) in enumerate(frame.iterrows()):
        if bool(mask.iloc[position]):
            extra = f": {row[detail]}" if detail else ""
            rows.append(f"row {position + 2} ({row['slide_id']}{extra})")
    more = f" … and {len(rows) - _SHOWN} more" if len(rows) > _SHOWN else ""
    return ", ".join(rows[:_SHOWN]) + more


def check_data_root(slides: pd.DataFrame, *, sheet: Path, data_root: str | Path | None) -> None:
    """Refuse slide paths that lead outside ``data_root`` (after ``..`` and symbolic links are resolved).

    ``slides["path"]`` holds the paths as the pipeline uses them (relative ones already resolved
    against the sheet's folder). Nothing is checked when no root is configured.
    """
    if data_root is None or str(data_root) == "":
        return
    root = Path(os.path.realpath(data_root))
    if not root.is_dir():
        raise ConfigError(
            f"samples.data_root {data_root} is not a folder.",
            column="samples.data_root",
            fix="set samples.data_root to the folder that holds the slides, or remove the key.",
        )
    outside = pd.Series(
        [not Path(os.path.realpath(path)).is_relative_to(root) for path in slides["path"]], index=slides.index
    )
    if outside.any():
        raise ConfigError(
            f"slide paths outside samples.data_root ({root}): {_rows(slides, outside, detail='path')}.",
            path=sheet,
            column="path",
            fix="correct the paths (no '..' or links leading out of the data root), move the slides into "
            "the data root, or point samples.data_root at the folder that holds them.",
        )


def missing_slide_files(slides: pd.DataFrame, *, sheet: Path, on_error: str) -> set[str]:
    """The slide ids whose file does not exist; a :class:`ConfigError` listing them unless ``on_error`` is skip."""
    absent = pd.Series([not os.path.exists(path) for path in slides["path"]], index=slides.index)
    if not absent.any():
        return set()
    if on_error != "skip":
        raise ConfigError(
            f"{int(absent.sum())} slide file(s) do not exist: {_rows(slides, absent, detail='path')}.",
            path=sheet,
            column="path",
            fix="correct the paths (relative paths are resolved against the sheet's folder) or remove "
            "the rows; or set on_error: skip to exclude these slides and go on with the others.",
        )
    missing = set(slides.loc[absent, "slide_id"].astype(str))
    log.warning("%s: %d slide file(s) do not exist and will be excluded: %s", sheet, len(missing), sorted(missing))
    return missing


def check_slide_patients(
    slides: pd.DataFrame, *, slides_sheet: Path, patients: pd.DataFrame, patients_sheet: Path
) -> None:
    """Every slide's patient must be in the patients sheet."""
    unknown = ~slides["patient_id"].astype(str).isin(set(patients["patient_id"].astype(str)))
    if unknown.any():
        raise ConfigError(
            f"slides whose patient is not in the patients sheet ({patients_sheet}): "
            f"{_rows(slides, unknown, detail='patient_id')}.",
            path=slides_sheet,
            column="patient_id",
            fix="add the patients to the patients sheet or correct the slides' patient ids.",
        )


def check_weights_file(weights: str | None, *, source: str) -> None:
    """The configured encoder weights file must exist (whether it fits the encoder is checked on loading)."""
    if weights and not Path(weights).is_file():
        raise ConfigError(
            f"the encoder weights file {weights} (key 'features.weights') does not exist.",
            path=source,
            column="features.weights",
            fix="point features.weights at an existing file (relative paths are resolved from the working "
            "directory), or set it to null where the encoder needs no weights file (efficientnet_lite0).",
        )

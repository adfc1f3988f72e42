"""Cohort tables: sample sheets, labels, genomics and clinical data to typed parquet files.

Outputs in the tables folder (all written atomically):
``slides.parquet`` (slide_id, patient_id, path, mpp), ``patients.parquet`` (patient_id, grade as
a class index, survival_time in months, event), ``genomics.parquet`` and ``clinical.parquet``
(patient_id + columns; only patient_id when the cohort has no such table), ``gene_groups.parquet`` (feature, gene, group) and ``labels.json``.
No statistic is fitted here: imputation and scaling happen per fold, on its training part.
"""

from __future__ import annotations

import os

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from histofuse.config import read_sheet
from histofuse.errors import ConfigError
from histofuse.io import atomic_path, write_text_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TableInputs:
    """Where the cohort's tables are."""

    slides: Path | None
    patients: Path
    genomics: Path | None = None
    gene_groups: Path | None = None
    clinical: Path | None = None
    grade_classes: tuple[str, ...] = ("2", "3", "4")


def _row_list(frame: pd.DataFrame, mask: pd.Series, id_column: str, limit: int = 10) -> str:
    rows = [f"row {i + 2} ({frame.at[i, id_column]})" for i in frame.index[mask]]
    more = f" … and {len(rows) - limit} more" if len(rows) > limit else ""
    return ", ".join(rows[:limit]) + more


def resolve_slide_paths(slides: pd.DataFrame, sheet: Path) -> pd.DataFrame:
    """Make relative slide paths relative to the sheet's folder.

    A sheet named by a relative path gives relative slide paths (from the working directory), so a
    project folder can move without every slide counting as a changed input.
    """
    out = slides.copy()
    base = sheet.parent
    out["path"] = [str(p if Path(p).is_absolute() else Path(os.path.normpath(base / p))) for p in out["path"]]
    return out


def _numeric_table(path: Path, *, known_patients: pd.Index) -> pd.DataFrame:
    frame = read_sheet(path)
    if "patient_id" not in frame.columns:
        raise ConfigError("no 'patient_id' column.", path=path, fix="name the patient identifier column 'patient_id'.")
    dup = frame["patient_id"].duplicated(keep=False)
    if dup.any():
        raise ConfigError(
            f"duplicate patient ids: {_row_list(frame, dup, 'patient_id')}.",
            path=path,
            column="patient_id",
            fix="keep one row per patient.",
        )
    out = pd.DataFrame({"patient_id": frame["patient_id"].astype(str)})
    for column in frame.columns.drop("patient_id"):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad_text = values.isna() & frame[column].notna()
        bad_inf = np.isinf(values.to_numpy(dtype=float, na_value=np.nan))
        if bad_text.any() or bad_inf.any():
            mask = bad_text | pd.Series(bad_inf, index=frame.index)
            raise ConfigError(
                f"non-numeric or infinite values in {_row_list(frame, mask, 'patient_id')}.",
                path=path,
                column=str(column),
                fix="use numbers, leave missing values empty (they are imputed per fold), or drop the column.",
            )
        out[str(column)] = values.astype("float64")
    unknown = ~out["patient_id"].isin(known_patients)
    if unknown.any():
        log.warning("%s: %d row(s) for patients not in the patients sheet are ignored", path, int(unknown.sum()))
    return out.loc[~unknown].reset_index(drop=True)


def _clinical_table(path: Path, *, known_patients: pd.Index) -> pd.DataFrame:
    frame = read_sheet(path)
    if "patient_id" not in frame.columns:
        raise ConfigError("no 'patient_id' column.", path=path, fix="name the patient identifier column 'patient_id'.")
    dup = frame["patient_id"].duplicated(keep=False)
    if dup.any():
        raise ConfigError(
            f"duplicate patient ids: {_row_list(frame, dup, 'patient_id')}.",
            path=path,
            column="patient_id",
            fix="keep one row per patient.",
        )
    out = frame.copy()
    for column in out.columns.drop("patient_id"):
        numeric = pd.to_numeric(out[column], errors="coerce")
        if numeric.notna().sum() == out[column].notna().sum():
            out[column] = numeric.astype("float64")
    return out.loc[out["patient_id"].isin(known_patients)].reset_index(drop=True)


def build_patients(frame: pd.DataFrame, *, path: Path, grade_classes: Sequence[str]) -> pd.DataFrame:
    """Typed patients table: grade → class index, survival_time (months), event (0/1)."""
    classes = [str(c) for c in grade_classes]
    out = pd.DataFrame({"patient_id": frame["patient_id"].astype(str)})
    if "grade" in frame.columns:
        raw = frame["grade"].map(lambda v: None if pd.isna(v) else str(v).strip())
        normalised = raw.map(lambda v: None if v is None else (str(int(float(v))) if _is_number(v) else v))
        bad = normalised.notna() & ~normalised.isin(classes)
        if bad.any():
            raise ConfigError(
                f"grade values outside {classes}: {_row_list(frame, bad, 'patient_id')}.",
                path=path,
                column="grade",
                fix="correct the values, leave them empty when unknown, or list the classes in labels.grade_classes.",
            )
        out["grade"] = pd.array([None if v is None else classes.index(v) for v in normalised], dtype="Int64")
    else:
        out["grade"] = pd.array([None] * len(frame), dtype="Int64")
    out["survival_time"] = pd.to_numeric(frame.get("survival_months"), errors="coerce").astype("float64")
    out["event"] = pd.array(
        [None if pd.isna(v) else int(float(v)) for v in frame.get("event", pd.Series([None] * len(frame)))],
        dtype="Int64",
    )
    return out


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write a parquet file atomically."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def prepare_tables(inputs: TableInputs, out_dir: Path) -> dict[str, Path]:
    """Read, check and type the cohort tables; write them to ``out_dir``."""
    patients_raw = read_sheet(inputs.patients)
    patients = build_patients(patients_raw, path=inputs.patients, grade_classes=inputs.grade_classes)
    known = pd.Index(patients["patient_id"])
    outputs = {"patients": out_dir / "patients.parquet", "labels": out_dir / "labels.json"}

    modalities: dict[str, set[str]] = {}
    if inputs.slides is not None:
        slides = resolve_slide_paths(read_sheet(inputs.slides), inputs.slides)
        unknown = ~slides["patient_id"].isin(known)
        if unknown.any():
            raise ConfigError(
                f"slides whose patient is not in the patients sheet ({inputs.patients}): "
                f"{_row_list(slides, unknown, 'slide_id')}.",
                path=inputs.slides,
                column="patient_id",
                fix="add the patients to the patients sheet or correct the patient ids.",
            )
        if "mpp" not in slides.columns:
            slides["mpp"] = np.nan
        slides["mpp"] = pd.to_numeric(slides["mpp"], errors="coerce")
        write_parquet(slides[["slide_id", "patient_id", "path", "mpp"]], out_dir / "slides.parquet")
        outputs["slides"] = out_dir / "slides.parquet"
        modalities["wsi"] = set(slides["patient_id"])
    if inputs.genomics is not None:
        genomics = _numeric_table(inputs.genomics, known_patients=known)
        write_parquet(genomics, out_dir / "genomics.parquet")
        modalities["genomics"] = set(genomics["patient_id"])
        groups = _gene_groups(inputs.gene_groups, genomics.columns.drop("patient_id"))
        write_parquet(groups, out_dir / "gene_groups.parquet")
    else:
        write_parquet(pd.DataFrame({"patient_id": pd.Series(dtype=str)}), out_dir / "genomics.parquet")
        write_parquet(_gene_groups(None, pd.Index([])), out_dir / "gene_groups.parquet")
    outputs["genomics"] = out_dir / "genomics.parquet"
    outputs["gene_groups"] = out_dir / "gene_groups.parquet"
    if inputs.clinical is not None:
        clinical = _clinical_table(inputs.clinical, known_patients=known)
        modalities["clinical"] = set(clinical["patient_id"])
    else:
        clinical = pd.DataFrame({"patient_id": pd.Series(dtype=str)})
    write_parquet(clinical, out_dir / "clinical.parquet")
    outputs["clinical"] = out_dir / "clinical.parquet"

    covered = set().union(*modalities.values()) if modalities else set()
    orphans = patients["patient_id"][~patients["patient_id"].isin(covered)]
    if modalities and not orphans.empty:
        raise ConfigError(
            f"patients with no slide and no other modality: {', '.join(orphans.head(10))}"
            + (f" … and {len(orphans) - 10} more" if len(orphans) > 10 else "")
            + ".",
            path=inputs.patients,
            fix="add their slides or data, or remove them from the patients sheet.",
        )
    write_parquet(patients, outputs["patients"])
    labels = {"grade": {"classes": list(map(str, inputs.grade_classes))}, "survival": {"unit": "months"}}
    write_text_atomic(outputs["labels"], json.dumps(labels, indent=2))
    log.info(
        "tables: %d patients, modalities %s",
        len(patients),
        ", ".join(f"{k} ({len(v)})" for k, v in modalities.items()),
    )
    return outputs


def _gene_groups(path: Path | None, features: pd.Index) -> pd.DataFrame:
    """Map each genomic feature to its gene and group (``ungrouped`` when no list is given)."""
    genes = [str(f).rsplit("_", 1)[0] if str(f).rsplit("_", 1)[-1] in ("cnv", "mut", "rnaseq") else str(f) for f in features]
    frame = pd.DataFrame({"feature": list(map(str, features)), "gene": genes})
    if path is None:
        frame["group"] = "ungrouped"
        return frame
    groups = read_sheet(path)
    if not {"gene", "group"} <= set(groups.columns):
        raise ConfigError("gene groups need columns 'gene,group'.", path=path, fix="add a header line 'gene,group'.")
    mapping = dict(zip(groups["gene"], groups["group"], strict=True))
    frame["group"] = [mapping.get(g, "ungrouped") for g in frame["gene"]]
    return frame

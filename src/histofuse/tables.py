"""Cohort tables: sample sheets, labels, genomics and clinical data to typed parquet files.

Outputs in the tables folder (all written atomically):
``slides.parquet`` (slide_id, patient_id, path, mpp), ``patients.parquet`` (patient_id, grade and
the other class labels as class indices, survival_time in months, event, binary labels),
``genomics.parquet`` and ``clinical.parquet`` (patient_id + columns; only patient_id when the
cohort has no such table or the modality is not used), ``gene_groups.parquet`` (feature, gene,
group; a feature may belong to several groups), ``labels.json`` (class names per label; under ``preparation`` what reading changed) and
``cohort_splits.tsv`` (the cohort's own train/val/test assignments, possibly empty).
The cohort comes either from histofuse's own sheets (:class:`TableInputs`) or from a published
format read by :mod:`histofuse.cohorts`. No statistic is fitted here: imputation and scaling
happen per fold, on its training part (:mod:`histofuse.preprocess`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from histofuse.errors import ConfigError
from histofuse.io import atomic_path, write_text_atomic
from histofuse.notes import NOTES_FILE, collect_warnings, write_notes
from histofuse.sheets import note_unread_columns, read_sheet

if TYPE_CHECKING:
    from histofuse.cohorts import CohortTables

log = logging.getLogger(__name__)

MODALITIES: tuple[str, ...] = ("wsi", "genomics", "clinical")
PATIENT_COLUMNS: tuple[str, ...] = ("patient_id", "grade", "survival_months", "event")
"""The columns of histofuse's patients sheet (workflow/schemas/patients.schema.yaml)."""
SLIDE_COLUMNS: tuple[str, ...] = ("slide_id", "patient_id", "path", "mpp")
"""The columns of the slides sheet (workflow/schemas/slides.schema.yaml)."""


@dataclass(frozen=True, kw_only=True)
class TableInputs:
    """Where the cohort's tables are."""

    slides: Path | None
    patients: Path
    genomics: Path | None = None
    gene_groups: Path | None = None
    clinical: Path | None = None
    grade_classes: tuple[str, ...] = ("2", "3", "4")
    modalities: tuple[str, ...] = MODALITIES


def _row_list(
    frame: pd.DataFrame,
    mask: pd.Series,
    id_column: str,
    limit: int = 10,
    *,
    value_column: str | None = None,
    quote: bool = False,
) -> str:
    """``row N (id)`` of the masked rows (header = row 1), with the cell of ``value_column`` when given.

    ``quote``: show the id quoted (``row 6 ('CMU-1')``), for ids that are the problem.
    """
    rows = [
        f"row {i + 2} ({frame.at[i, id_column]!r})" if quote else f"row {i + 2} ({frame.at[i, id_column]})"
        for i in frame.index[mask]
    ]
    if value_column:
        rows = [f"{text} = {frame.at[i, value_column]!r}" for text, i in zip(rows, frame.index[mask], strict=True)]
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


def _read_slides(sheet: Path) -> pd.DataFrame:
    frame = read_sheet(sheet)
    note_unread_columns(frame, SLIDE_COLUMNS, path=sheet)
    slides = resolve_slide_paths(frame, sheet)
    repeated = slides["path"].duplicated(keep=False)
    if repeated.any():
        log.warning(
            "%s: the same file under several slide ids (each is processed, and counts, once per id): %s",
            sheet,
            _row_list(slides, repeated, "slide_id", value_column="path"),
        )
    return slides


def _patient_rows(path: Path) -> pd.DataFrame:
    """A per-patient table's rows as text, refused without a ``patient_id`` column or with a patient twice."""
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
    return frame


def _numeric_table(path: Path, *, known_patients: pd.Index) -> pd.DataFrame:
    frame = _patient_rows(path)
    out = pd.DataFrame({"patient_id": frame["patient_id"].astype(str)})
    for column in frame.columns.drop("patient_id"):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad_text = values.isna() & frame[column].notna()
        bad_inf = np.isinf(values.to_numpy(dtype=float, na_value=np.nan))
        if bad_text.any() or bad_inf.any():
            mask = bad_text | pd.Series(bad_inf, index=frame.index)
            raise ConfigError(
                f"non-numeric or infinite values in {_row_list(frame, mask, 'patient_id', value_column=column)}.",
                path=path,
                column=str(column),
                fix="use finite numbers, leave missing values empty or NA (not NaN; they are imputed per fold), "
                "or drop the column.",
            )
        out[str(column)] = values.astype("float64")
    return _drop_unknown_patients(out, known_patients, path=path)


def _drop_unknown_patients(frame: pd.DataFrame, known_patients: pd.Index, *, path: Path) -> pd.DataFrame:
    """The rows of known patients; the others are left out with a warning naming their rows and ids."""
    unknown = ~frame["patient_id"].isin(known_patients)
    if unknown.any():
        log.warning(
            "%s: %d row(s) for patients not in the patients sheet are left out: %s",
            path,
            int(unknown.sum()),
            _row_list(frame, unknown, "patient_id", quote=True),
        )
    return frame.loc[~unknown].reset_index(drop=True)


def _clinical_table(path: Path, *, known_patients: pd.Index) -> pd.DataFrame:
    frame = _patient_rows(path)
    out = frame.copy()
    for column in out.columns.drop("patient_id"):
        numeric = pd.to_numeric(out[column], errors="coerce")
        given = out[column].notna()
        bad = (given & numeric.isna()) | pd.Series(np.isinf(numeric.to_numpy(dtype=float, na_value=np.nan)), index=out.index)
        # a column of numbers with a few text, NaN or infinite cells is a numeric column with typos,
        # not a category: a text column holds mostly text
        if bad.any() and numeric.notna().sum() > bad.sum():
            raise ConfigError(
                f"a numeric column holds text, NaN or infinite values: "
                f"{_row_list(frame, bad, 'patient_id', value_column=column)}.",
                path=path,
                column=str(column),
                fix="use finite numbers, leave missing values empty (they are imputed per fold), or drop the column.",
            )
        if not bad.any():
            out[column] = numeric.astype("float64")
    return _drop_unknown_patients(out, known_patients, path=path)


BINARY_LABELS: tuple[str, ...] = ("aln", "molecular_grade4")
"""0/1 label columns carried from the patients table (a ``binary`` task predicts one of them)."""


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
    half = out["survival_time"].isna() != out["event"].isna()
    if half.any():
        log.warning(
            "%s: survival_months or event given without the other in %s: these patients have no survival label",
            path,
            _row_list(frame, half, "patient_id"),
        )
    for name in BINARY_LABELS:
        if name in frame.columns:
            values = pd.to_numeric(frame[name], errors="coerce")
            bad = (values.isna() & frame[name].notna()) | (values.notna() & ~values.isin([0, 1]))
            if bad.any():
                raise ConfigError(
                    f"{name} values other than 0, 1 or empty: {_row_list(frame, bad, 'patient_id')}.",
                    path=path,
                    column=name,
                    fix="write 0 or 1, or leave the cell empty when unknown.",
                )
            out[name] = values.astype("Int64")
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
    note_unread_columns(patients_raw, PATIENT_COLUMNS, path=inputs.patients)
    patients = build_patients(patients_raw, path=inputs.patients, grade_classes=inputs.grade_classes)
    known = pd.Index(patients["patient_id"])
    outputs = {"patients": out_dir / "patients.parquet", "labels": out_dir / "labels.json"}

    _check_modalities(inputs.modalities)
    modalities: dict[str, set[str]] = {}
    if inputs.slides is not None and "wsi" in inputs.modalities:
        slides = _read_slides(inputs.slides)
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
    else:
        write_parquet(_EMPTY_SLIDES, out_dir / "slides.parquet")
        outputs["slides"] = out_dir / "slides.parquet"
    if inputs.genomics is not None and "genomics" in inputs.modalities:
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
    if inputs.clinical is not None and "clinical" in inputs.modalities:
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
    labels: dict[str, Any] = {"grade": {"classes": list(map(str, inputs.grade_classes))}, "survival": {"unit": "months"}}
    labels.update({name: {"classes": ["0", "1"]} for name in BINARY_LABELS if name in patients.columns})
    write_text_atomic(outputs["labels"], json.dumps(labels, indent=2))
    outputs["splits"] = write_cohort_splits(None, out_dir)
    log.info(
        "tables: %d patients, modalities %s",
        len(patients),
        ", ".join(f"{k} ({len(v)})" for k, v in modalities.items()),
    )
    return outputs


def prepare_cohort_tables(
    *,
    cohort_format: str,
    format_options: dict[str, Any],
    slides: Path | None,
    patients: Path | None,
    out_dir: Path,
    genomics: Path | None = None,
    gene_groups: Path | None = None,
    clinical: Path | None = None,
    grade_classes: tuple[str, ...] = ("2", "3", "4"),
    modalities: tuple[str, ...] = MODALITIES,
) -> list[str]:
    """Prepare the tables of a cohort in any format; the warnings about its input, also in ``notes.tsv``.

    Histofuse's own sheets go through :func:`prepare_tables`, a published format through
    :func:`histofuse.cohorts.read_cohort` and :func:`write_cohort_tables`.
    """
    from histofuse.cohorts.formats import check_format_options, is_published, read_cohort

    out_dir = Path(out_dir)
    check_format_options(cohort_format, format_options)
    with collect_warnings() as notes:
        if is_published(cohort_format):
            cohort = read_cohort(cohort_format, **format_options)
            write_cohort_tables(cohort, out_dir, slides_sheet=slides, modalities=modalities, gene_groups=gene_groups)
        else:
            if patients is None:
                raise ConfigError(
                    "the histofuse format needs a patients sheet.", fix="set samples.patients in the config."
                )
            inputs = TableInputs(
                slides=slides,
                patients=patients,
                genomics=genomics,
                gene_groups=gene_groups,
                clinical=clinical,
                grade_classes=grade_classes,
                modalities=modalities,
            )
            prepare_tables(inputs, out_dir)
    write_notes(out_dir / NOTES_FILE, notes)
    return notes


def _gene_groups(path: Path | None, features: pd.Index) -> pd.DataFrame:
    """Map each genomic feature to its gene and group (``ungrouped`` when no list is given)."""
    frame = pd.DataFrame({"feature": list(map(str, features)), "gene": [_gene_of(str(f)) for f in features]})
    if path is None:
        frame["group"] = "ungrouped"
        return frame
    groups = read_sheet(path)
    if not {"gene", "group"} <= set(groups.columns):
        raise ConfigError("gene groups need columns 'gene,group'.", path=path, fix="add a header line 'gene,group'.")
    _note_unmatched_genes(set(groups["gene"].astype(str)), set(frame["gene"]), path=path)
    return _expand_groups(frame, groups)


def _note_unmatched_genes(listed: set[str], measured: set[str], *, path: Path) -> None:
    """Warn about genes of the list the genomics table lacks, and measured genes the list leaves ungrouped."""
    if not measured:
        return
    for what, genes in (
        ("genes of the list that the genomic table has no column for", listed - measured),
        ("genes of the genomic table that no group lists (they go to 'ungrouped')", measured - listed),
    ):
        if genes:
            shown = ", ".join(sorted(genes)[:10]) + (f" … and {len(genes) - 10} more" if len(genes) > 10 else "")
            log.warning("%s: %d %s: %s", path, len(genes), what, shown)


def _expand_groups(frame: pd.DataFrame, groups: pd.DataFrame) -> pd.DataFrame:
    """One row per feature and group it belongs to (``ungrouped`` when in none)."""
    mapping: dict[str, list[str]] = {}
    for gene, group in zip(groups["gene"].astype(str), groups["group"].astype(str), strict=True):
        if group not in mapping.setdefault(gene, []):
            mapping[gene].append(group)
    rows = [
        (feature, gene, group)
        for feature, gene in zip(frame["feature"], frame["gene"], strict=True)
        for group in mapping.get(gene, ["ungrouped"])
    ]
    return pd.DataFrame(rows, columns=["feature", "gene", "group"])


_EMPTY_SLIDES = pd.DataFrame(
    {
        "slide_id": pd.Series(dtype=str),
        "patient_id": pd.Series(dtype=str),
        "path": pd.Series(dtype=str),
        "mpp": pd.Series(dtype="float64"),
    }
)


def _check_modalities(modalities: Sequence[str]) -> None:
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities:
        raise ConfigError(
            f"modalities {list(modalities)}: unknown or none.",
            column="modalities",
            fix=f"list one or more of {list(MODALITIES)}.",
        )


def write_cohort_splits(splits: pd.DataFrame | None, out_dir: Path) -> Path:
    """The cohort's own ``patient_id, fold, split`` table (header only when it has none)."""
    path = out_dir / "cohort_splits.tsv"
    frame = splits if splits is not None else pd.DataFrame(columns=["patient_id", "fold", "split"])
    with atomic_path(path) as tmp:
        frame[["patient_id", "fold", "split"]].to_csv(tmp, sep="\t", index=False)
    return path


def _class_index(values: pd.Series, classes: Sequence[str]) -> pd.Series:
    lookup = {name: index for index, name in enumerate(classes)}
    return pd.array([None if pd.isna(v) else lookup[str(v)] for v in values], dtype="Int64")


def _cohort_patients(cohort: CohortTables) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The patients table (labels as class indices) and ``labels.json``'s content."""
    from histofuse.cohorts.labels import TEXT_LABELS

    source = cohort.patients
    patients = pd.DataFrame({"patient_id": source["patient_id"].astype(str)})
    labels: dict[str, Any] = {"survival": {"unit": "months"}, "source": cohort.source}
    if cohort.notes:
        labels["preparation"] = list(cohort.notes)
    for name, classes in TEXT_LABELS.items():
        if name in source.columns:
            patients[name] = _class_index(source[name], classes)
            labels[name] = {"classes": list(classes)}
    if "grade" not in patients.columns:
        patients["grade"] = pd.array([None] * len(patients), dtype="Int64")
        labels["grade"] = {"classes": ["2", "3", "4"]}
    patients["survival_time"] = (
        source["survival_months"].astype("float64") if "survival_months" in source.columns else np.nan
    )
    patients["event"] = source["event"].astype("Int64") if "event" in source.columns else pd.array([None] * len(source), dtype="Int64")
    for name in BINARY_LABELS:
        if name in source.columns:
            patients[name] = source[name].astype("Int64")
            labels[name] = {"classes": ["0", "1"]}
    return patients, labels


def _cohort_slides(slides_sheet: Path, known: pd.Index, source: str) -> pd.DataFrame:
    """The slides sheet's rows, refused where a slide's patient is not in the cohort."""
    slides = _read_slides(slides_sheet)
    unknown = ~slides["patient_id"].astype(str).isin(known)
    if unknown.any():
        raise ConfigError(
            f"slides whose patient is not in the {source} cohort: {_row_list(slides, unknown, 'slide_id')}.",
            path=slides_sheet,
            column="patient_id",
            fix="correct the patient ids or remove those slides.",
        )
    if "mpp" not in slides.columns:
        slides["mpp"] = np.nan
    slides["mpp"] = pd.to_numeric(slides["mpp"], errors="coerce")
    return slides[["slide_id", "patient_id", "path", "mpp"]]


def _cohort_genomics(
    cohort: CohortTables, modalities: Sequence[str], gene_groups: Path | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The genomic table and its gene groups (both empty when genomics is not used)."""
    if cohort.genomics is None or "genomics" not in modalities:
        return pd.DataFrame({"patient_id": pd.Series(dtype=str)}), _gene_groups(None, pd.Index([]))
    features = cohort.genomics.columns.drop("patient_id")
    if gene_groups is None and cohort.gene_groups is not None:
        return cohort.genomics, _expand_groups(_gene_groups(None, features)[["feature", "gene"]], cohort.gene_groups)
    return cohort.genomics, _gene_groups(gene_groups, features)


def _check_covered(patients: pd.DataFrame, covered: set[str], source: str, modalities: Sequence[str]) -> None:
    orphans = patients["patient_id"][~patients["patient_id"].isin(covered)]
    if not orphans.empty:
        raise ConfigError(
            f"{len(orphans)} patient(s) of the {source} cohort have no data in the modalities used "
            f"({', '.join(modalities)}): {', '.join(orphans.head(10))}"
            + (f" … and {len(orphans) - 10} more" if len(orphans) > 10 else "")
            + ".",
            column="modalities",
            fix="add a modality that covers them (e.g. clinical), or give them slides or genomic data.",
        )


def _known_splits(cohort: CohortTables, patients: pd.DataFrame) -> pd.DataFrame | None:
    """The cohort's own splits without rows of patients it does not have (a warning lists them)."""
    splits = cohort.splits
    if splits is None:
        return None
    known_split = splits["patient_id"].isin(patients["patient_id"])
    if not known_split.all():
        from histofuse.cohorts.checks import id_list

        log.warning(
            "%s cohort splits: %d row(s) for patients not in the cohort are left out: %s",
            cohort.source,
            int((~known_split).sum()),
            id_list(splits.loc[~known_split, "patient_id"].unique()),
        )
    return splits[known_split]


def write_cohort_tables(
    cohort: CohortTables,
    out_dir: Path,
    *,
    slides_sheet: Path | None = None,
    modalities: Sequence[str] = MODALITIES,
    gene_groups: Path | None = None,
) -> dict[str, Path]:
    """Write a cohort read from a published format in the layout :func:`prepare_tables` writes.

    Slides come from histofuse's slides sheet (``slides_sheet``; the formats carry no slide paths);
    the tables of modalities not in ``modalities`` are written empty. ``gene_groups``: a
    ``gene,group`` csv (e.g. tumour / microenvironment lists) used instead of the format's own groups.
    """
    _check_modalities(modalities)
    out_dir = Path(out_dir)
    patients, labels = _cohort_patients(cohort)
    outputs = {name: out_dir / f"{name}.parquet" for name in ("patients", "slides", "genomics", "gene_groups", "clinical")}
    outputs["labels"] = out_dir / "labels.json"

    covered: set[str] = set()
    slides = _EMPTY_SLIDES
    if slides_sheet is not None and "wsi" in modalities:
        slides = _cohort_slides(slides_sheet, pd.Index(patients["patient_id"]), cohort.source)
        covered |= set(slides["patient_id"].astype(str))
    write_parquet(slides, outputs["slides"])
    genomics, groups = _cohort_genomics(cohort, modalities, gene_groups)
    covered |= set(genomics["patient_id"])
    write_parquet(genomics, outputs["genomics"])
    write_parquet(groups, outputs["gene_groups"])
    if cohort.clinical is not None and "clinical" in modalities:
        clinical = cohort.clinical
        covered |= set(clinical["patient_id"])
    else:
        clinical = pd.DataFrame({"patient_id": pd.Series(dtype=str)})
    write_parquet(clinical, outputs["clinical"])

    _check_covered(patients, covered, cohort.source, modalities)
    write_parquet(patients, outputs["patients"])
    write_text_atomic(outputs["labels"], json.dumps(labels, indent=2))
    outputs["splits"] = write_cohort_splits(_known_splits(cohort, patients), out_dir)
    log.info("tables (%s format): %d patients; modalities used: %s", cohort.source, len(patients), list(modalities))
    return outputs


def _gene_of(feature: str) -> str:
    head, _, suffix = feature.rpartition("_")
    return head if head and suffix in ("cnv", "mut", "rnaseq") else feature

"""MCAT / PORPOISE multi-omic csv (one row per slide), its gene-family signatures and its splits.

The table (often shipped as ``.csv.zip``, read as is) has ``case_id, slide_id, site, is_female,
oncotree_code, age, survival_months, censorship, train`` and genomic columns suffixed ``_cnv``,
``_mut`` or ``_rnaseq``; a leading unnamed column is pandas' index. ``censorship`` = 1 means
censored (event = 1 − censorship); ``survival_months`` is in months.

Patient-level frames hold one row per case: every slide row of a case must carry the same
survival, clinical and genomic values, otherwise ConfigError lists the cases and columns.
``site`` (the tissue source site, a batch variable) and ``train`` are not used.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from histofuse.cohorts.checks import numeric_columns, one_row_per_patient, patient_ids, require_columns, text_column
from histofuse.cohorts.labels import LABEL_COLUMNS, event_indicator, survival_months
from histofuse.cohorts.model import CohortTables
from histofuse.cohorts.reading import read_table
from histofuse.cohorts.splits import read_mcat_splits
from histofuse.errors import ConfigError

log = logging.getLogger(__name__)

SOURCE = "mcat"
GENOMIC_SUFFIXES: tuple[str, ...] = ("_cnv", "_mut", "_rnaseq")
REQUIRED = ("case_id", "slide_id", "survival_months", "censorship")
NUMERIC_CLINICAL = ("age", "is_female")
TEXT_CLINICAL = ("oncotree_code",)
DEFAULT_CLINICAL: tuple[str, ...] = ("age", "is_female", "oncotree_code")
UNUSED = ("site", "train")


def read_signatures(path: str | Path) -> pd.DataFrame:
    """Gene families (one column per family, genes listed below) → long ``gene, group`` frame.

    Group names are the headers in snake case ("Tumor Suppressor Genes" → ``tumor_suppressor_genes``).
    A gene listed in several families appears once per family.
    """
    path = Path(path)
    table = read_table(path)
    if table.empty or len(table.columns) == 0:
        raise ConfigError("no gene families.", path=path, fix="list one family per column, its genes below the header.")
    rows: list[tuple[str, str]] = []
    for column in table.columns:
        group = re.sub(r"[^0-9a-z]+", "_", column.lower()).strip("_")
        if not group:
            raise ConfigError("a family column has no name.", path=path, row=1, fix="name every column.")
        rows.extend((str(gene), group) for gene in table[column].dropna())
    groups = pd.DataFrame(rows, columns=["gene", "group"]).drop_duplicates().reset_index(drop=True)
    multi = int(groups["gene"].duplicated().sum())
    log.info(
        "%s: %d genes in %d families (%d memberships beyond a gene's first family)",
        path,
        groups["gene"].nunique(),
        groups["group"].nunique(),
        multi,
    )
    return groups


def read_mcat(
    table: str | Path,
    *,
    signatures: str | Path | None = None,
    splits: str | Path | Sequence[str | Path] | None = None,
    clinical_columns: Sequence[str] = DEFAULT_CLINICAL,
) -> CohortTables:
    """Read an MCAT-format cohort: one row per case in patient-level frames, slides kept apart.

    ``signatures``: ``datasets_csv_sig_signatures.csv`` → gene groups. ``splits``: MCAT's splits
    folder (``splits_{k}.csv``) or a list of split files. ``clinical_columns``: which of age,
    is_female (numbers) and oncotree_code (text) form the clinical table (empty: none).
    """
    path = Path(table)
    frame = read_table(path)
    require_columns(frame, list(REQUIRED), path=path, what="MCAT table")
    unknown = [c for c in clinical_columns if c not in DEFAULT_CLINICAL]
    if unknown:
        raise ConfigError(
            f"unknown clinical column(s) {unknown}.",
            path=path,
            fix=f"choose among {', '.join(DEFAULT_CLINICAL)}.",
        )
    require_columns(frame, list(clinical_columns), path=path, what="MCAT table")
    if frame.columns[0] in ("", "Unnamed: 0"):
        frame = frame.drop(columns=frame.columns[0])
    cases = patient_ids(frame, "case_id", path=path, unique=False)
    slide_ids = patient_ids(frame, "slide_id", path=path)
    genomic = [c for c in frame.columns if c.endswith(GENOMIC_SUFFIXES)]
    if not genomic:
        raise ConfigError(
            "no genomic columns (names ending in _cnv, _mut or _rnaseq).",
            path=path,
            fix="use the MCAT table with its genomic columns.",
        )
    ignored = [c for c in frame.columns if c not in genomic and c not in REQUIRED and c not in clinical_columns]
    if ignored:
        log.info("%s: columns not used: %s", path, ", ".join(ignored))

    per_slide = pd.DataFrame({"patient_id": cases}, index=frame.index)
    per_slide["survival_months"] = survival_months(
        frame["survival_months"], unit="months", path=path, column="survival_months", ids=cases
    )
    per_slide["event"] = event_indicator(censored=frame["censorship"], path=path, column="censorship", ids=cases)
    numbers = [c for c in clinical_columns if c in NUMERIC_CLINICAL]
    if numbers:
        per_slide[numbers] = numeric_columns(frame, numbers, path=path, ids=cases)
    for column in clinical_columns:
        if column in TEXT_CLINICAL:
            per_slide[column] = text_column(frame[column])
    per_slide = pd.concat([per_slide, numeric_columns(frame, genomic, path=path, ids=cases)], axis=1)
    per_case = one_row_per_patient(per_slide, patient_column="patient_id", path=path)
    per_case = per_case.sort_values("patient_id").reset_index(drop=True)

    patients = per_case[["patient_id"] + [c for c in LABEL_COLUMNS if c in per_case.columns]]
    genomics = per_case[["patient_id", *genomic]].copy()
    clinical = per_case[["patient_id", *clinical_columns]].copy() if clinical_columns else None
    slides = pd.DataFrame({"slide_id": slide_ids, "patient_id": cases}).sort_values("slide_id").reset_index(drop=True)
    groups = None if signatures is None else read_signatures(signatures)
    if groups is not None:
        genes = {c.rsplit("_", 1)[0] for c in genomic}
        ungrouped = genes - set(groups["gene"])
        if ungrouped:
            log.warning("%s: %d gene(s) of the table are in no family of %s", path, len(ungrouped), signatures)
    folds = None if splits is None else read_mcat_splits(splits, patients["patient_id"])
    log.info("%s: %d slides of %d cases, %d genomic features", path, len(slides), len(patients), len(genomic))
    return CohortTables(
        patients=patients.copy(),
        genomics=genomics,
        clinical=clinical,
        slides=slides,
        gene_groups=groups,
        splits=folds,
        source=SOURCE,
    )

"""Pathomic Fusion TCGA-GBMLGG tables (``all_dataset.csv``, ``grade_data.csv``, ``pnas_splits.csv``).

``all_dataset.csv``: ``TCGA ID, indexes, censored, Survival months`` and 80 genomic features
(``codeletion``, ``idh mutation``, 36 gene-level CNV calls −2…2, 42 arm-level CNV values).
Its "Survival months" column holds **days** (converted with 30.4375 days per month) and
``censored`` = 1 means alive at last follow-up (event = 1 − censored).

``grade_data.csv``: grade 2/3/4, molecular subtype, histology, age, gender, the same follow-up
time (days) and vital status, which are checked against ``all_dataset.csv``.

Labels: ``survival_months``, ``event``; ``diagnosis`` (WHO 2021, from ``idh mutation`` and
``codeletion``) and ``molecular_grade4`` (from the diagnosis and the CDKN2A call, −2 =
homozygous deletion); with ``grade_data.csv`` also ``grade`` and ``subtype``.

The genomic features keep their published names, ``idh mutation`` and ``codeletion`` included:
they define ``diagnosis`` and ``subtype``, so leave them out of the inputs of a model that
predicts those labels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from histofuse.cohorts.checks import (
    choice_column,
    id_list,
    numeric_columns,
    patient_ids,
    require_columns,
    text_column,
)
from histofuse.cohorts.labels import (
    LABEL_COLUMNS,
    disagreeing,
    event_indicator,
    molecular_grade4,
    parse_grade,
    parse_subtype,
    subtype_of,
    survival_months,
    who2021_diagnosis,
)
from histofuse.cohorts.model import CohortTables
from histofuse.cohorts.reading import read_table
from histofuse.cohorts.splits import read_pnas_splits
from histofuse.errors import ConfigError

log = logging.getLogger(__name__)

SOURCE = "pathomic_gbmlgg"
ID = "TCGA ID"
DATASET_META = ("TCGA ID", "indexes", "censored", "Survival months")
IDH, CODEL, CDKN2A = "idh mutation", "codeletion", "CDKN2A"
GRADE_COLUMNS = (
    "TCGA ID",
    "TCGA Dataset",
    "Histology",
    "Grade",
    "Age at diagnosis",
    "Gender",
    "Molecular subtype",
    "Time to last followup or death (months)",
    "Vital status",
)
LEAKY_CLINICAL = {"TCGA Dataset": "tcga_dataset", "Histology": "histology"}
"""Clinical columns that encode the grade / diagnosis labels (GBM = grade 4, "glioblastoma" histology)."""


def _dataset(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    table = read_table(path)
    require_columns(table, list(DATASET_META) + [IDH, CODEL], path=path, what="Pathomic Fusion all_dataset.csv")
    ids = patient_ids(table, ID, path=path)
    features = [c for c in table.columns if c not in DATASET_META]
    genomics = numeric_columns(table, features, path=path, ids=ids)
    patients = pd.DataFrame({"patient_id": ids}, index=table.index)
    patients["survival_months"] = survival_months(
        table["Survival months"], unit="days", path=path, column="Survival months", ids=ids
    )
    patients["event"] = event_indicator(censored=table["censored"], path=path, column="censored", ids=ids)
    diagnosis = who2021_diagnosis(genomics[IDH], genomics[CODEL], ids=ids, path=path, columns=(IDH, CODEL))
    patients["diagnosis"] = diagnosis
    if CDKN2A in genomics.columns:
        homdel = genomics[CDKN2A].map(lambda v: v if pd.isna(v) else float(v <= -2))
        patients["molecular_grade4"] = molecular_grade4(diagnosis, homdel)
    genomics.insert(0, "patient_id", ids)
    return patients, genomics, table["Survival months"]


def _grade_data(path: Path, patients: pd.DataFrame, days: pd.Series, keep_leaky: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    table = read_table(path)
    require_columns(table, list(GRADE_COLUMNS), path=path, what="Pathomic Fusion grade_data.csv")
    ids = patient_ids(table, ID, path=path)
    unknown = ~ids.isin(patients["patient_id"])
    if unknown.any():
        raise ConfigError(
            f"{int(unknown.sum())} patient(s) are not in the genomic table: {id_list(ids[unknown])}.",
            path=path,
            column=ID,
            fix="use the grade_data.csv and all_dataset.csv of the same release.",
        )
    absent = patients["patient_id"][~patients["patient_id"].isin(ids)]
    if len(absent):
        log.warning(
            "%s: %d patient(s) of the genomic table have no row here; their grade and subtype are missing: %s",
            path,
            len(absent),
            id_list(absent),
        )
    by_id = pd.Series(patients.index, index=patients["patient_id"])
    mine = by_id.reindex(ids).to_numpy()

    followup = numeric_columns(table, ["Time to last followup or death (months)"], path=path, ids=ids).iloc[:, 0]
    reference = pd.to_numeric(days.loc[mine]).to_numpy()
    differs = followup.notna() & (followup.to_numpy() != reference)
    if differs.any():
        raise ConfigError(
            f"follow-up time (days) disagrees with 'Survival months' of all_dataset.csv for {id_list(ids[differs])}.",
            path=path,
            column="Time to last followup or death (months)",
            fix="use the grade_data.csv and all_dataset.csv of the same release.",
        )
    vital = choice_column(
        table["Vital status"],
        lambda v: {"alive": "0", "deceased": "1", "dead": "1"}.get(v.lower()),
        path=path,
        column="Vital status",
        allowed=("Alive", "Deceased"),
        ids=ids,
    ).astype("Int64")
    vital_mismatch = disagreeing(vital, pd.Series(patients.loc[mine, "event"].to_numpy(), index=vital.index))
    if vital_mismatch.any():
        raise ConfigError(
            f"vital status disagrees with 'censored' of all_dataset.csv for {id_list(ids[vital_mismatch])}.",
            path=path,
            column="Vital status",
            fix="use the grade_data.csv and all_dataset.csv of the same release.",
        )

    labels = pd.DataFrame({"patient_id": ids}, index=table.index)
    labels["grade"] = parse_grade(table["Grade"], path=path, column="Grade", ids=ids)
    labels["subtype"] = parse_subtype(table["Molecular subtype"], path=path, column="Molecular subtype", ids=ids)
    implied = subtype_of(pd.Series(patients.loc[mine, "diagnosis"].to_numpy(), index=table.index))
    mismatch = disagreeing(labels["subtype"], implied)
    if mismatch.any():
        log.warning(
            "%s: molecular subtype disagrees with IDH / codeletion of the genomic table for %d patient(s): %s "
            "(the subtype is taken from this table)",
            path,
            int(mismatch.sum()),
            id_list(ids[mismatch]),
        )

    clinical = pd.DataFrame({"patient_id": ids}, index=table.index)
    clinical["age"] = numeric_columns(table, ["Age at diagnosis"], path=path, ids=ids).iloc[:, 0]
    clinical["gender"] = text_column(table["Gender"])
    if keep_leaky:
        for column, name in LEAKY_CLINICAL.items():
            clinical[name] = text_column(table[column])
        log.warning("%s: keeping clinical columns that encode grade / diagnosis, as asked: %s", path, ", ".join(LEAKY_CLINICAL))
    else:
        log.warning(
            "%s: dropping clinical columns that encode the grade / diagnosis labels: %s (keep_leaky=True keeps them)",
            path,
            ", ".join(LEAKY_CLINICAL),
        )
    return labels, clinical


def read_pathomic_gbmlgg(
    dataset: str | Path,
    *,
    grade_data: str | Path | None = None,
    splits: str | Path | None = None,
    keep_leaky: bool = False,
) -> CohortTables:
    """Read the Pathomic Fusion TCGA-GBMLGG tables into canonical frames (sorted by patient id).

    ``dataset``: ``all_dataset.csv``; ``grade_data``: ``grade_data.csv`` (adds grade, subtype and
    the clinical table: age, gender); ``splits``: ``pnas_splits.csv`` (15 train/test folds).
    ``keep_leaky`` keeps "TCGA Dataset" and "Histology" as clinical columns (they encode the labels).
    """
    dataset = Path(dataset)
    patients, genomics, days = _dataset(dataset)
    clinical = None
    if grade_data is not None:
        labels, clinical = _grade_data(Path(grade_data), patients, days, keep_leaky)
        patients = patients.merge(labels, on="patient_id", how="left")
        clinical = clinical.sort_values("patient_id").reset_index(drop=True)
    patients = patients[["patient_id", *(c for c in LABEL_COLUMNS if c in patients.columns)]]
    patients = patients.sort_values("patient_id").reset_index(drop=True)
    genomics = genomics.sort_values("patient_id").reset_index(drop=True)
    folds = None if splits is None else read_pnas_splits(splits, patients["patient_id"])
    log.info("%s: %d patients, %d genomic features", dataset, len(patients), genomics.shape[1] - 1)
    return CohortTables(patients=patients, genomics=genomics, clinical=clinical, splits=folds, source=SOURCE)

"""Readers that turn the cohort tables the field publishes into histofuse's canonical frames.

Formats: ``pathomic_gbmlgg`` (Pathomic Fusion TCGA-GBMLGG), ``mcat`` (MCAT / PORPOISE csv),
``bcnb`` (BCNB-style breast clinical table) and ``generic`` (any wide table with a column map).
:func:`read_cohort` picks the reader by name; each returns a :class:`CohortTables`.
"""

from __future__ import annotations

from histofuse.cohorts.bcnb import parse_ki67, parse_ki67_text, read_bcnb, synthetic_bcnb, write_synthetic_bcnb
from histofuse.cohorts.formats import READERS, format_parameters, read_cohort
from histofuse.cohorts.generic import ColumnMap, read_generic
from histofuse.cohorts.labels import (
    DIAGNOSES,
    GRADE_CLASSES,
    SUBTYPES,
    aln_from_status,
    event_indicator,
    molecular_grade4,
    parse_grade,
    parse_subtype,
    survival_months,
    who2021_diagnosis,
)
from histofuse.cohorts.mcat import read_mcat, read_signatures
from histofuse.cohorts.model import CohortTables
from histofuse.cohorts.pathomic import read_pathomic_gbmlgg
from histofuse.cohorts.splits import read_mcat_splits, read_pnas_splits

__all__ = [
    "DIAGNOSES",
    "GRADE_CLASSES",
    "READERS",
    "SUBTYPES",
    "CohortTables",
    "ColumnMap",
    "aln_from_status",
    "event_indicator",
    "format_parameters",
    "molecular_grade4",
    "parse_grade",
    "parse_ki67",
    "parse_ki67_text",
    "parse_subtype",
    "read_bcnb",
    "read_cohort",
    "read_generic",
    "read_mcat",
    "read_mcat_splits",
    "read_pathomic_gbmlgg",
    "read_pnas_splits",
    "read_signatures",
    "survival_months",
    "synthetic_bcnb",
    "who2021_diagnosis",
    "write_synthetic_bcnb",
]

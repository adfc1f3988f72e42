"""Per-patient labels: grade, WHO-2021 glioma diagnosis, histomolecular subtype, survival, ALN status.

Every label may be missing for a patient; a missing input gives a missing label and nothing is
guessed. Text that is not a known value raises ConfigError naming the rows.

WHO CNS 2021 classification of adult-type diffuse gliomas, as derived by :func:`who2021_diagnosis`:

=============  ============  ======================================================
IDH mutation   1p/19q codel  diagnosis
=============  ============  ======================================================
wildtype (0)   0 or missing  glioblastoma, IDH-wildtype
wildtype (0)   1             inconsistent: missing, with a warning listing the patients
mutant (1)     0             astrocytoma, IDH-mutant
mutant (1)     1             oligodendroglioma, IDH-mutant and 1p/19q-codeleted
mutant (1)     missing       missing (astrocytoma and oligodendroglioma both possible)
missing        any           missing
=============  ============  ======================================================

CDKN2A/B homozygous deletion does not change this three-way family. WHO 2021 uses it to *grade*:
an IDH-mutant astrocytoma with the deletion is CNS WHO grade 4 whatever its histology.
:func:`molecular_grade4` records this as its own label (1 = grade 4 on molecular grounds alone).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from histofuse.cohorts.checks import binary_column, choice_column, id_list, numeric_columns, row_list
from histofuse.errors import ConfigError

log = logging.getLogger(__name__)

GRADE_CLASSES: tuple[str, ...] = ("2", "3", "4")
GLIOBLASTOMA = "glioblastoma, IDH-wildtype"
ASTROCYTOMA = "astrocytoma, IDH-mutant"
OLIGODENDROGLIOMA = "oligodendroglioma, IDH-mutant and 1p/19q-codeleted"
DIAGNOSES: tuple[str, ...] = (GLIOBLASTOMA, ASTROCYTOMA, OLIGODENDROGLIOMA)
SUBTYPES: tuple[str, ...] = ("IDHwt", "IDHmut-non-codel", "IDHmut-codel")
SUBTYPE_OF_DIAGNOSIS: dict[str, str] = dict(zip(DIAGNOSES, SUBTYPES, strict=True))
DAYS_PER_MONTH = 30.4375
"""Mean Gregorian month (365.25 / 12 days)."""
MONTHS_PER_UNIT: dict[str, float] = {"days": 1.0 / DAYS_PER_MONTH, "months": 1.0, "years": 12.0}
ALN_STATUSES: tuple[str, ...] = ("N0", "N+(1-2)", "N+(>2)")
BINARY_LABELS: tuple[str, ...] = ("event", "aln", "molecular_grade4")
TEXT_LABELS: dict[str, tuple[str, ...]] = {"grade": GRADE_CLASSES, "diagnosis": DIAGNOSES, "subtype": SUBTYPES}
LABEL_COLUMNS: tuple[str, ...] = ("grade", "diagnosis", "subtype", "molecular_grade4", "survival_months", "event", "aln")

_GRADE = re.compile(r"^(?:cns\s*)?(?:who\s*)?(?:grade\s*|g\s*)?(ii|iii|iv|2|3|4)(?:\.0*)?$", re.IGNORECASE)
_ROMAN = {"ii": "2", "iii": "3", "iv": "4"}
_GRADE_SPELLINGS = ("2", "3", "4", "II", "III", "IV", "G2", "G3", "G4", "Grade II", "WHO grade 4")


def _grade_class(text: str) -> str | None:
    match = _GRADE.match(text.strip())
    if match is None:
        return None
    value = match.group(1).lower()
    return _ROMAN.get(value, value)


def parse_grade(
    values: pd.Series, *, path: Path | str | None = None, column: str = "grade", ids: pd.Series | None = None
) -> pd.Series:
    """Grade as class names "2"/"3"/"4" (``string``); accepts 2, 2.0, II, G2, "Grade II", "WHO grade 2"."""
    return choice_column(values, _grade_class, path=path, column=column, allowed=_GRADE_SPELLINGS, ids=ids)


def _subtype(text: str) -> str | None:
    key = re.sub(r"\s+", "", text).lower()
    return next((s for s in SUBTYPES if s.lower() == key), None)


def parse_subtype(
    values: pd.Series, *, path: Path | str | None = None, column: str = "subtype", ids: pd.Series | None = None
) -> pd.Series:
    """Histomolecular subtype IDHwt / IDHmut-non-codel / IDHmut-codel (case and spaces ignored)."""
    return choice_column(values, _subtype, path=path, column=column, allowed=SUBTYPES, ids=ids)


def _aln(text: str) -> str | None:
    key = re.sub(r"\s+", "", text).upper()
    return {"N0": "0", "N+(1-2)": "1", "N+(>2)": "1"}.get(key)


def aln_from_status(
    values: pd.Series, *, path: Path | str | None = None, column: str = "ALN status", ids: pd.Series | None = None
) -> pd.Series:
    """Binary axillary lymph-node metastasis: N0 → 0, N+(1-2) and N+(>2) → 1 (Int64)."""
    classes = choice_column(values, _aln, path=path, column=column, allowed=ALN_STATUSES, ids=ids)
    return classes.astype("Int64")


def survival_months(
    times: pd.Series,
    *,
    unit: str,
    path: Path | str | None = None,
    column: str = "survival_time",
    ids: pd.Series | None = None,
) -> pd.Series:
    """Survival (or follow-up) time in months from text or numbers in ``unit`` (days, months, years).

    Days are converted with 30.4375 days per month. Negative, non-numeric, NaN and infinite
    values raise ConfigError listing the rows.
    """
    if unit not in MONTHS_PER_UNIT:
        raise ConfigError(
            f"unknown time unit {unit!r}.",
            path=path,
            column=column,
            fix=f"use one of {', '.join(MONTHS_PER_UNIT)}.",
        )
    numbers = numeric_columns(times.to_frame(column), [column], path=path, ids=ids)[column]
    negative = numbers < 0
    if negative.any():
        raise ConfigError(
            f"negative survival times: {row_list(times.index[negative], ids, times)}.",
            path=path,
            column=column,
            fix="correct the times (time from diagnosis to death or last follow-up, never negative).",
        )
    return numbers * MONTHS_PER_UNIT[unit]


def event_indicator(
    *,
    event: pd.Series | None = None,
    censored: pd.Series | None = None,
    path: Path | str | None = None,
    column: str | None = None,
    ids: pd.Series | None = None,
) -> pd.Series:
    """Event indicator (1 = death observed) from exactly one of ``event`` or ``censored`` (event = 1 − censored)."""
    if (event is None) == (censored is None):
        raise ConfigError(
            "give exactly one of an event column or a censoring column.",
            path=path,
            fix="map either 'event' (1 = death observed) or 'censored' (1 = alive at last follow-up).",
        )
    if event is not None:
        return binary_column(event, path=path, column=column or "event", ids=ids)
    assert censored is not None
    return 1 - binary_column(censored, path=path, column=column or "censored", ids=ids)


def who2021_diagnosis(
    idh_mutant: pd.Series,
    codeleted: pd.Series,
    *,
    ids: pd.Series | None = None,
    path: Path | str | None = None,
    columns: tuple[str, str] = ("idh mutation", "codeletion"),
) -> pd.Series:
    """WHO CNS 2021 diffuse glioma family from IDH mutation and 1p/19q codeletion (0/1/missing).

    See the module docstring for the table. IDH-wildtype tumours with a codeletion are
    inconsistent (the codeletion defines oligodendroglioma, which is IDH-mutant by definition):
    their diagnosis is missing and a warning lists them.
    """
    idh = binary_column(idh_mutant, path=path, column=columns[0], ids=ids)
    codel = binary_column(codeleted.reindex(idh.index), path=path, column=columns[1], ids=ids)
    diagnosis = pd.Series(pd.array([pd.NA] * len(idh), dtype="string"), index=idh.index)
    diagnosis[(idh == 0).fillna(False) & (codel != 1).fillna(True)] = GLIOBLASTOMA
    diagnosis[(idh == 1).fillna(False) & (codel == 0).fillna(False)] = ASTROCYTOMA
    diagnosis[(idh == 1).fillna(False) & (codel == 1).fillna(False)] = OLIGODENDROGLIOMA
    inconsistent = (idh == 0).fillna(False) & (codel == 1).fillna(False)
    if inconsistent.any():
        names = ids[inconsistent] if ids is not None else idh.index[inconsistent]
        log.warning(
            "%s: %d patient(s) with a 1p/19q codeletion but no IDH mutation get no diagnosis "
            "(inconsistent under WHO 2021): %s",
            path or "table",
            int(inconsistent.sum()),
            id_list(names),
        )
    return diagnosis


def subtype_of(diagnosis: pd.Series) -> pd.Series:
    """Histomolecular subtype implied by a WHO-2021 diagnosis (missing stays missing)."""
    return diagnosis.map(SUBTYPE_OF_DIAGNOSIS, na_action="ignore").astype("string")


def molecular_grade4(diagnosis: pd.Series, cdkn2a_homdel: pd.Series) -> pd.Series:
    """1 where WHO 2021 assigns CNS WHO grade 4 on molecular grounds alone, 0 where it does not, else NA.

    Glioblastoma, IDH-wildtype is always grade 4. An IDH-mutant astrocytoma is grade 4 when CDKN2A/B
    is homozygously deleted (1), otherwise 0 (its grade then rests on histology); unknown deletion
    status gives NA. Oligodendrogliomas are never grade 4 (0). No diagnosis gives NA.
    """
    homdel = binary_column(cdkn2a_homdel.reindex(diagnosis.index), path=None, column="CDKN2A homozygous deletion")
    values: list[int | None] = []
    for label, deleted in zip(diagnosis, homdel, strict=True):
        if pd.isna(label):
            values.append(None)
        elif label == GLIOBLASTOMA:
            values.append(1)
        elif label == OLIGODENDROGLIOMA:
            values.append(0)
        else:
            values.append(None if pd.isna(deleted) else int(deleted))
    return pd.Series(pd.array(values, dtype="Int64"), index=diagnosis.index)


def disagreeing(first: pd.Series, second: pd.Series) -> pd.Series:
    """Boolean mask: both values present and different."""
    both = first.notna() & second.notna()
    return both & (first.astype("string") != second.astype("string")).fillna(False)

"""Label derivation: WHO-2021 glioma diagnosis, grade, subtype, survival, event and ALN status."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from histofuse.cohorts.labels import (
    ASTROCYTOMA,
    GLIOBLASTOMA,
    OLIGODENDROGLIOMA,
    aln_from_status,
    event_indicator,
    molecular_grade4,
    parse_grade,
    parse_subtype,
    subtype_of,
    survival_months,
    who2021_diagnosis,
)
from histofuse.errors import ConfigError

NA = pd.NA

# IDH mutant, 1p/19q codeleted → diagnosis (None = missing)
WHO_2021 = [
    (0, 0, GLIOBLASTOMA),
    (0, NA, GLIOBLASTOMA),
    (0, 1, None),
    (1, 0, ASTROCYTOMA),
    (1, 1, OLIGODENDROGLIOMA),
    (1, NA, None),
    (NA, 0, None),
    (NA, 1, None),
    (NA, NA, None),
]


def _series(values: list[object], start: int = 2) -> pd.Series:
    return pd.Series(values, index=range(start, start + len(values)), dtype=object)


@pytest.mark.parametrize(("idh", "codel", "expected"), WHO_2021)
def test_who2021_truth_table(idh: object, codel: object, expected: str | None) -> None:
    diagnosis = who2021_diagnosis(_series([idh]), _series([codel]))
    assert diagnosis.dtype == "string"
    if expected is None:
        assert pd.isna(diagnosis.iloc[0])
    else:
        assert diagnosis.iloc[0] == expected


def test_who2021_accepts_text_and_float_cells() -> None:
    diagnosis = who2021_diagnosis(_series(["1", 1.0, "0.0", None]), _series(["1", 0.0, "0", "1"]))
    assert diagnosis.tolist()[:3] == [OLIGODENDROGLIOMA, ASTROCYTOMA, GLIOBLASTOMA] and pd.isna(diagnosis.iloc[3])


def test_codeletion_without_idh_mutation_is_missing_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    ids = _series(["A", "B", "C"])
    with caplog.at_level(logging.WARNING, logger="histofuse.cohorts"):
        diagnosis = who2021_diagnosis(_series([0, 0, 1]), _series([1, 0, 1]), ids=ids, path="genomics.csv")
    assert pd.isna(diagnosis.iloc[0]) and diagnosis.iloc[1] == GLIOBLASTOMA and diagnosis.iloc[2] == OLIGODENDROGLIOMA
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 patient(s)" in warnings[0] and ": A" in warnings[0] and "B" not in warnings[0]


def test_who2021_rejects_values_other_than_0_1() -> None:
    with pytest.raises(ConfigError, match=r"column 'IDH'.*row 3 \(B\) = 2"):
        who2021_diagnosis(_series([1, 2]), _series([0, 0]), ids=_series(["A", "B"]), columns=("IDH", "codel"))


@pytest.mark.parametrize(
    ("diagnosis", "homdel", "expected"),
    [
        (GLIOBLASTOMA, NA, 1),
        (GLIOBLASTOMA, 0, 1),
        (ASTROCYTOMA, 1, 1),
        (ASTROCYTOMA, 0, 0),
        (ASTROCYTOMA, NA, None),
        (OLIGODENDROGLIOMA, 1, 0),
        (NA, 1, None),
    ],
)
def test_cdkn2a_deletion_grades_astrocytomas_without_changing_the_family(
    diagnosis: object, homdel: object, expected: int | None
) -> None:
    labels = pd.Series(pd.array([diagnosis], dtype="string"), index=[2])
    before = labels.copy()
    grade4 = molecular_grade4(labels, _series([homdel]))
    assert grade4.dtype == "Int64"
    assert (pd.isna(grade4.iloc[0]) and expected is None) or grade4.iloc[0] == expected
    pd.testing.assert_series_equal(labels, before)


def test_subtype_of_diagnosis() -> None:
    diagnosis = pd.Series(pd.array([GLIOBLASTOMA, ASTROCYTOMA, OLIGODENDROGLIOMA, NA], dtype="string"))
    subtypes = subtype_of(diagnosis)
    assert subtypes.tolist()[:3] == ["IDHwt", "IDHmut-non-codel", "IDHmut-codel"] and pd.isna(subtypes.iloc[3])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2", "2"),
        ("3.0", "3"),
        ("4", "4"),
        ("II", "2"),
        ("iii", "3"),
        ("IV", "4"),
        ("G2", "2"),
        ("g4", "4"),
        ("Grade III", "3"),
        ("WHO grade 4", "4"),
        ("CNS WHO grade IV", "4"),
        (" 2 ", "2"),
    ],
)
def test_grade_spellings(text: str, expected: str) -> None:
    parsed = parse_grade(_series([text]))
    assert parsed.dtype == "string" and parsed.iloc[0] == expected


def test_missing_grade_stays_missing() -> None:
    parsed = parse_grade(_series([None, "2"]))
    assert pd.isna(parsed.iloc[0]) and parsed.iloc[1] == "2"


@pytest.mark.parametrize("text", ["1", "I", "5", "V", "high", "2a", "grade", "nan"])
def test_unknown_grades_raise_with_rows(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_grade(_series(["2", text]), path="patients.csv", column="Grade", ids=_series(["P1", "P2"]))
    message = str(caught.value)
    assert "file patients.csv" in message and "column 'Grade'" in message and f"row 3 (P2) = {text!r}" in message
    assert "row 2" not in message


@given(
    st.sampled_from(["II", "III", "IV", "2", "3", "4"]),
    st.sampled_from(["", "G", "Grade ", "grade", "WHO grade "]),
    st.booleans(),
)
def test_grade_prefixes_and_case(value: str, prefix: str, lower: bool) -> None:
    text = prefix + value
    expected = {"II": "2", "III": "3", "IV": "4"}.get(value, value)
    assert parse_grade(_series([text.lower() if lower else text])).iloc[0] == expected


def test_subtypes() -> None:
    parsed = parse_subtype(_series(["IDHwt", "idhmut-codel", " IDHmut-non-codel ", None]))
    assert parsed.tolist()[:3] == ["IDHwt", "IDHmut-codel", "IDHmut-non-codel"] and pd.isna(parsed.iloc[3])
    with pytest.raises(ConfigError, match=r"row 2 .*'IDH-mutant'"):
        parse_subtype(_series(["IDH-mutant"]))


@pytest.mark.parametrize(("unit", "factor"), [("days", 1 / 30.4375), ("months", 1.0), ("years", 12.0)])
def test_survival_units(unit: str, factor: float) -> None:
    months = survival_months(_series(["10", "0", None]), unit=unit)
    np.testing.assert_allclose(months.iloc[:2], [10 * factor, 0.0])
    assert np.isnan(months.iloc[2]) and months.dtype == np.float64


def test_survival_rejects_negative_and_unknown_units() -> None:
    with pytest.raises(ConfigError, match=r"row 3 \(B\)"):
        survival_months(_series(["1", "-1"]), unit="days", ids=_series(["A", "B"]))
    with pytest.raises(ConfigError, match="weeks"):
        survival_months(_series(["1"]), unit="weeks")


def test_event_from_event_or_censored() -> None:
    assert event_indicator(event=_series(["1", "0"])).tolist() == [1, 0]
    censored = event_indicator(censored=_series(["1", "0", None]))
    assert censored.tolist()[:2] == [0, 1] and pd.isna(censored.iloc[2]) and censored.dtype == "Int64"
    with pytest.raises(ConfigError, match="exactly one"):
        event_indicator(event=_series(["1"]), censored=_series(["0"]))
    with pytest.raises(ConfigError, match=r"row 2 .*'2'"):
        event_indicator(event=_series(["2"]))


def test_aln_status_is_binary() -> None:
    aln = aln_from_status(_series(["N0", "N+(1-2)", "N+(>2)", "n+ (>2)", None]))
    assert aln.dtype == "Int64" and aln.tolist()[:4] == [0, 1, 1, 1] and pd.isna(aln.iloc[4])
    with pytest.raises(ConfigError, match=r"row 3 \(P2\) = 'N1'"):
        aln_from_status(_series(["N0", "N1"]), ids=_series(["P1", "P2"]))

"""One rule for missing cells in every sheet and table: empty and ``NA`` are missing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from histofuse.cohorts.reading import read_table
from histofuse.sheets import MISSING_TOKENS, read_sheet


def test_empty_and_na_are_missing_in_sheets_and_cohort_tables(tmp_path: Path) -> None:
    assert MISSING_TOKENS == {"", "NA"}
    slides = tmp_path / "slides.tsv"
    slides.write_text("slide_id\tpatient_id\tpath\tmpp\nS1\tP1\ta.tiff\tNA\nS2\tP2\tb.tiff\t\nS3\tP3\tc.tiff\t0.5\n")
    patients = tmp_path / "patients.csv"
    patients.write_text("patient_id,grade,survival_months,event\nP1,NA,10,1\nP2,,12,0\nP3,3,NA,NA\n")
    table = tmp_path / "clinical.tsv"
    table.write_text("case_id\tage\nP1\tNA\nP2\t\nP3\t61\n")

    mpp = read_sheet(slides)["mpp"]
    assert mpp.isna().tolist() == [True, True, False]
    frame = read_sheet(patients)
    assert frame["grade"].isna().tolist() == [True, True, False]
    assert frame.loc[2, ["survival_months", "event"]].isna().all()
    age = read_table(table)["age"]
    assert pd.isna(age.iloc[0]) and pd.isna(age.iloc[1]) and age.iloc[2] == "61"

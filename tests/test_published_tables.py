"""Published tables as they are: BCNB's clinical workbook (.xlsx), its header case and Ki67 styles."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bcnb_published import HEADER, KI67_PERCENT, write_bcnb_xlsx
from histofuse.cohorts import read_cohort
from histofuse.cohorts.reading import read_table
from histofuse.errors import ConfigError


def test_bcnb_workbook_is_read_as_published(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_bcnb_xlsx(tmp_path / "patient-clinical-data.xlsx", 16)
    with caplog.at_level(logging.INFO, logger="histofuse.cohorts"):
        cohort = read_cohort("bcnb", clinical=str(path))
    clinical = cohort.clinical.set_index("patient_id").loc[[str(i) for i in range(1, 17)]]
    np.testing.assert_allclose(clinical["ki67"].to_numpy(), KI67_PERCENT * 2)
    np.testing.assert_array_equal(clinical["histological_grade"].to_numpy(), [1, 2, 3] * 5 + [1])
    aln = cohort.patients.set_index("patient_id").loc[[str(i) for i in range(1, 17)], "aln"]
    np.testing.assert_array_equal(aln.to_numpy(dtype=int), [1 if i % 3 == 0 else 0 for i in range(16)])
    notes = " | ".join(cohort.notes)
    assert "'Histological grading' as 'Histological Grading'" in notes
    assert "10 value(s)" in notes and "multiplied by 100" in notes  # 0.3, 0.05, 0.6, 0.15, 0.2 twice
    assert "2 value(s) (row 3 (2) = '30-40%'" in notes and "midpoint" in notes
    assert "4 value(s)" in notes and "full-width" in notes
    assert "row 4 (3) = '＜5%'" in notes  # the file's row and the patient id
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "multiplied by 100" in logged and "full-width" in logged


def test_excel_rows_keep_the_numbers_a_user_sees(tmp_path: Path) -> None:
    table = read_table(write_bcnb_xlsx(tmp_path / "c.xlsx", 3))
    assert list(table.columns) == HEADER and list(table.index) == [2, 3, 4]
    assert table.loc[2, "Patient ID"] == "1" and table.loc[2, "Ki67"] == "0.3" and table.loc[3, "Ki67"] == "30-40%"


@pytest.mark.parametrize(
    "rename",
    [{"ALN status": " aln STATUS "}, {"Age(years)": "Age (years)"}, {"Tumour Size(cm)": "Tumour Size（cm）"}],
)
def test_bcnb_columns_match_ignoring_case_spaces_and_width(tmp_path: Path, rename: dict[str, str]) -> None:
    header = [rename.get(c, c) for c in HEADER]
    cohort = read_cohort("bcnb", clinical=str(write_bcnb_xlsx(tmp_path / "c.xlsx", 6, header=header)))
    assert len(cohort.patients) == 6 and cohort.clinical["age"].notna().all()


def test_a_missing_bcnb_column_is_named(tmp_path: Path) -> None:
    header = ["ER status" if c == "ER" else c for c in HEADER]
    with pytest.raises(ConfigError, match=r"lacks column\(s\) 'ER'") as err:
        read_cohort("bcnb", clinical=str(write_bcnb_xlsx(tmp_path / "c.xlsx", 4, header=header)))
    assert "c.xlsx" in str(err.value)


def test_two_headers_matching_one_bcnb_column_are_refused(tmp_path: Path) -> None:
    header = ["KI67" if c == "Molecular subtype" else c for c in HEADER]
    with pytest.raises(ConfigError, match=r"'Ki67' and 'KI67' both match the BCNB column 'Ki67'"):
        read_cohort("bcnb", clinical=str(write_bcnb_xlsx(tmp_path / "c.xlsx", 4, header=header)))


def test_bcnb_text_table_takes_a_separator_but_a_workbook_does_not(tmp_path: Path) -> None:
    rows = pd.read_excel(write_bcnb_xlsx(tmp_path / "c.xlsx", 6), dtype=str)
    text = tmp_path / "clinical.dat"
    rows.to_csv(text, sep=";", index=False)
    assert len(read_cohort("bcnb", clinical=str(text), sep=";").patients) == 6
    with pytest.raises(ConfigError, match="separator"):
        read_cohort("bcnb", clinical=str(text))
    with pytest.raises(ConfigError, match="remove the 'sep' option"):
        read_cohort("bcnb", clinical=str(tmp_path / "c.xlsx"), sep=";")


def test_mixed_plain_units_are_named_row_by_row(caplog: pytest.LogCaptureFixture) -> None:
    from histofuse.cohorts import parse_ki67

    notes: list[str] = []
    with caplog.at_level(logging.WARNING, logger="histofuse.cohorts"):
        parsed = parse_ki67(pd.Series(["0.3", "15", "1", "0", "＞50%"], index=range(2, 7)), path="c.xlsx", notes=notes)
    np.testing.assert_allclose(parsed.to_numpy(), [30.0, 15.0, 1.0, 0.0, 50.0])
    mixed = [n for n in notes if "mixed units" in n]
    assert len(mixed) == 1 and "row 3 = '15'" in mixed[0] and "row 4 = '1'" in mixed[0]


# --- split files any cohort may give (folds.source: files) ---------------------------------------


def test_id_lists_are_one_fixed_split(tmp_path: Path) -> None:
    from histofuse.cohorts.splits import read_split_files

    (tmp_path / "train_id.txt").write_text("1\r\n2\r\n 3 \r\n\r\n")
    (tmp_path / "test_id.txt").write_text("4\n5")
    files = {"train": str(tmp_path / "train_id.txt"), "test": str(tmp_path / "test_id.txt")}
    folds = read_split_files(files, ["1", "2", "3", "4", "5", "6"])
    assert set(folds["fold"]) == {0}
    assert sorted(folds.loc[folds["split"] == "train", "patient_id"]) == ["1", "2", "3"]
    assert sorted(folds.loc[folds["split"] == "test", "patient_id"]) == ["4", "5"]
    (tmp_path / "test_id.txt").write_text("3\n4\n")
    with pytest.raises(ConfigError, match="patient 3 is listed in .*train_id.txt and in .*test_id.txt"):
        read_split_files(files, ["1", "2", "3", "4"])
    (tmp_path / "test_id.txt").write_text("4\n")
    with pytest.raises(ConfigError, match="not in the cohort: 4"):
        read_split_files(files, ["1", "2", "3"])


def test_folds_table_names_bad_rows(tmp_path: Path) -> None:
    from histofuse.cohorts.splits import read_split_files

    table = tmp_path / "folds.tsv"
    table.write_text("patient_id\tfold\tsplit\nA\t0\tTrain\nB\t0\tValidation\nC\t0\ttest\nA\t1\ttest\nB\t1\ttrain\n")
    folds = read_split_files({"table": str(table)}, ["A", "B", "C"])
    assert list(folds[folds["fold"] == 0].sort_values("patient_id")["split"]) == ["train", "val", "test"]
    table.write_text("patient_id\tfold\tsplit\nA\t0\ttrain\nB\t0\tholdout\n")
    with pytest.raises(ConfigError, match=r"row 3 \(B\) = 'holdout'"):
        read_split_files({"table": str(table)}, ["A", "B"])


def test_split_files_are_checked_before_any_job(tmp_path: Path) -> None:
    from histofuse.cohorts.splits import check_split_files

    (tmp_path / "train_id.txt").write_text("1\n")
    (tmp_path / "test_id.txt").write_text("2\n")
    lists = {"train": str(tmp_path / "train_id.txt"), "test": str(tmp_path / "test_id.txt")}
    check_split_files(lists, k=1)
    with pytest.raises(ConfigError, match="one fixed split"):
        check_split_files(lists, k=5)
    with pytest.raises(ConfigError, match="folds.files.val does not exist"):
        check_split_files({**lists, "val": str(tmp_path / "val_id.txt")}, k=1)
    with pytest.raises(ConfigError, match="'train' and 'test' id lists"):
        check_split_files({"train": lists["train"]}, k=1)
    with pytest.raises(ConfigError, match="folds.files is not set"):
        check_split_files(None, k=1)


# --- checks at DAG build -------------------------------------------------------------------------


def test_cox_covariates_missing_from_the_modalities_stop_the_dry_run(tmp_path: Path) -> None:
    import yaml

    from workflow_support import REPO, snakemake, write_config

    config = yaml.safe_load((REPO / "config" / "examples" / "tcga_gbmlgg.yaml").read_text())
    config["results"] = str(tmp_path / "results")
    config["modalities"] = ["genomics"]
    config["training"]["cox"]["covariates"] = ["grade", "age"]
    proc = snakemake("-n", "--configfile", str(write_config(tmp_path / "c.yaml", config)))
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "add clinical to modalities" in text and "['age']" in text
    assert "rule train:" not in text  # stopped before the DAG was built

    config["modalities"] = ["genomics", "clinical"]
    config["cohort"]["options"]["sep"] = ","
    proc = snakemake("-n", "--configfile", str(write_config(tmp_path / "c.yaml", config)))
    assert proc.returncode != 0 and "unknown option(s) sep" in proc.stdout + proc.stderr


def test_report_lists_what_preparation_changed(tmp_path: Path) -> None:
    import json

    from histofuse.report.sections import preparation_notes, preparation_section

    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"source": "bcnb", "preparation": ["c.xlsx, column 'Ki67': 3 value(s) … multiplied by 100"]}))
    files = []
    for fold in range(3):
        path = tmp_path / f"fold{fold}.json"
        path.write_text(json.dumps({"fold": fold, "notes": ["genomic columns '*_rnaseq' (12) are already standardised"] if fold < 2 else []}))
        files.append(path)
    assert preparation_notes(labels, files) == [
        ("prepare_tables", "c.xlsx, column 'Ki67': 3 value(s) … multiplied by 100"),
        ("preprocess (fold 0, 1)", "genomic columns '*_rnaseq' (12) are already standardised"),
    ]
    html = preparation_section(labels, files)
    assert "multiplied by 100" in html and "fold 0, 1" in html
    labels.write_text(json.dumps({"source": "bcnb"}))
    assert "Nothing to note" in preparation_section(labels, files[2:])

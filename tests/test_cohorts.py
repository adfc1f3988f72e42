"""Cohort-table readers: real published tables, the synthetic BCNB table, generic maps, bad tables."""

from __future__ import annotations

import logging
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, shared_file
from histofuse.cohorts import (
    CohortTables,
    ColumnMap,
    parse_ki67,
    parse_ki67_text,
    read_bcnb,
    read_cohort,
    read_generic,
    read_mcat,
    read_pathomic_gbmlgg,
    read_pnas_splits,
    read_signatures,
    synthetic_bcnb,
    write_synthetic_bcnb,
)
from histofuse.cohorts.labels import DAYS_PER_MONTH, SUBTYPE_OF_DIAGNOSIS
from histofuse.errors import ConfigError

PATHOMIC = ("data", "tables", "tcga_gbmlgg_pathomic")
MCAT = ("data", "tables", "mcat_ucec")
MCAT_TABLE = "datasets_csv_sig_tcga_ucec_all_clean.csv.zip"
BCNB_EXAMPLE = REPO / "resources" / "examples" / "bcnb" / "clinical.csv"


@pytest.fixture(scope="module")
def pathomic() -> CohortTables:
    return read_pathomic_gbmlgg(
        shared_file(*PATHOMIC, "all_dataset.csv"),
        grade_data=shared_file(*PATHOMIC, "grade_data.csv"),
        splits=shared_file(*PATHOMIC, "pnas_splits.csv"),
    )


@pytest.fixture(scope="module")
def mcat() -> CohortTables:
    return read_mcat(
        shared_file(*MCAT, MCAT_TABLE),
        signatures=shared_file(*MCAT, "datasets_csv_sig_signatures.csv"),
        splits=shared_file(*MCAT, "splits"),
    )


def _raw_pathomic() -> pd.DataFrame:
    return pd.read_csv(shared_file(*PATHOMIC, "all_dataset.csv")).set_index("TCGA ID")


# --- Pathomic Fusion TCGA-GBMLGG ------------------------------------------------------------


def test_pathomic_has_769_patients_and_80_genomic_features(pathomic: CohortTables) -> None:
    assert len(pathomic.patients) == 769 and pathomic.patients["patient_id"].is_unique
    features = pathomic.genomics.columns.drop("patient_id")
    assert len(features) == 80
    assert {"idh mutation", "codeletion", "CDKN2A", "1q", "22q"} <= set(features)
    assert (pathomic.genomics[features].dtypes == np.float64).all()
    assert pathomic.source == "pathomic_gbmlgg"
    # 7 rows have no gene- or arm-level values, 72 lack IDH / codeletion
    assert int(pathomic.genomics[features.drop(["idh mutation", "codeletion"])].isna().all(axis=1).sum()) == 7
    assert int(pathomic.genomics["idh mutation"].isna().sum()) == 72


def test_pathomic_survival_days_become_months(pathomic: CohortTables) -> None:
    raw = _raw_pathomic()
    patients = pathomic.patients.set_index("patient_id")
    assert raw.at["TCGA-02-0001", "Survival months"] == 358  # days, despite the header
    assert patients.at["TCGA-02-0001", "survival_months"] == pytest.approx(358 / 30.4375)
    assert patients.at["TCGA-02-0001", "survival_months"] == pytest.approx(11.76, abs=0.01)
    days = raw.loc[patients.index, "Survival months"].to_numpy(dtype=float)
    np.testing.assert_allclose(patients["survival_months"].to_numpy() * DAYS_PER_MONTH, days)


def test_pathomic_event_is_one_minus_censored(pathomic: CohortTables) -> None:
    raw = _raw_pathomic()
    patients = pathomic.patients.set_index("patient_id")
    assert patients["event"].dtype == "Int64"
    expected = 1 - raw.loc[patients.index, "censored"].to_numpy()
    np.testing.assert_array_equal(patients["event"].to_numpy(dtype=int), expected)
    assert int(patients["event"].sum()) == 388  # deceased in grade_data.csv


def test_pathomic_labels(pathomic: CohortTables) -> None:
    patients = pathomic.patients
    assert patients["grade"].dtype == "string"
    assert patients["grade"].value_counts().to_dict() == {"4": 350, "3": 205, "2": 181}
    assert int(patients["grade"].isna().sum()) == 33
    assert int(patients["subtype"].isna().sum()) == 72
    both = patients["diagnosis"].notna() & patients["subtype"].notna()
    assert both.sum() == 769 - 72
    implied = patients.loc[both, "diagnosis"].map(SUBTYPE_OF_DIAGNOSIS)
    assert (implied == patients.loc[both, "subtype"]).all()
    glioblastoma = patients["diagnosis"] == "glioblastoma, IDH-wildtype"
    assert (patients.loc[glioblastoma.fillna(False), "molecular_grade4"] == 1).all()
    assert list(pathomic.clinical.columns) == ["patient_id", "age", "gender"]


def test_pathomic_leaky_clinical_columns_are_dropped_loudly(caplog: pytest.LogCaptureFixture) -> None:
    dataset, grade = shared_file(*PATHOMIC, "all_dataset.csv"), shared_file(*PATHOMIC, "grade_data.csv")
    with caplog.at_level(logging.WARNING, logger="histofuse.cohorts"):
        read_pathomic_gbmlgg(dataset, grade_data=grade)
    assert any("TCGA Dataset" in r.message and "Histology" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    kept = read_pathomic_gbmlgg(dataset, grade_data=grade, keep_leaky=True)
    assert {"tcga_dataset", "histology"} <= set(kept.clinical.columns)


def test_pnas_splits_are_15_train_test_folds(pathomic: CohortTables) -> None:
    folds = pathomic.splits
    assert sorted(folds["fold"].unique()) == list(range(15))
    assert set(folds["split"]) == {"train", "test"}
    counts = folds.groupby(["fold", "split"]).size().unstack()
    assert (counts["train"] == 616).all() and (counts["test"] == 153).all()
    assert (folds.groupby("fold")["patient_id"].nunique() == 769).all()
    raw = pd.read_csv(shared_file(*PATHOMIC, "pnas_splits.csv"), lineterminator="\r", index_col=0)
    first = folds[folds["fold"] == 0].set_index("patient_id")["split"]
    assert (first.loc[raw.index] == raw["Randomization - 1"].str.lower()).all()


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_pathomic_line_endings_give_identical_frames(ending: str, pathomic: CohortTables, tmp_path: Path) -> None:
    files = {}
    for name in ("all_dataset.csv", "grade_data.csv", "pnas_splits.csv"):
        text = shared_file(*PATHOMIC, name).read_bytes().decode().replace("\r\n", "\n").replace("\r", "\n")
        files[name] = tmp_path / name
        files[name].write_bytes(text.replace("\n", ending).encode())
    again = read_pathomic_gbmlgg(files["all_dataset.csv"], grade_data=files["grade_data.csv"], splits=files["pnas_splits.csv"])
    for table in ("patients", "genomics", "clinical", "splits"):
        pd.testing.assert_frame_equal(getattr(again, table), getattr(pathomic, table))


def test_pathomic_shuffled_rows_give_the_same_cohort(pathomic: CohortTables, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    files = {}
    for name in ("all_dataset.csv", "grade_data.csv"):
        lines = shared_file(*PATHOMIC, name).read_bytes().decode().replace("\r\n", "\n").strip("\n").split("\n")
        body = [lines[1:][i] for i in rng.permutation(len(lines) - 1)]
        files[name] = tmp_path / name
        files[name].write_text("\n".join([lines[0], *body]) + "\n")
    again = read_pathomic_gbmlgg(files["all_dataset.csv"], grade_data=files["grade_data.csv"])
    for table in ("patients", "genomics", "clinical"):
        pd.testing.assert_frame_equal(getattr(again, table), getattr(pathomic, table))


def test_pathomic_grade_data_disagreeing_vital_status_raises(tmp_path: Path) -> None:
    text = shared_file(*PATHOMIC, "grade_data.csv").read_text()
    lines = text.replace("\r\n", "\n").split("\n")
    row = next(i for i, line in enumerate(lines) if line.startswith("TCGA-CS-4938,"))
    lines[row] = lines[row].replace(",Alive,", ",Deceased,")
    grade = tmp_path / "grade_data.csv"
    grade.write_text("\n".join(lines))
    with pytest.raises(ConfigError) as caught:
        read_pathomic_gbmlgg(shared_file(*PATHOMIC, "all_dataset.csv"), grade_data=grade)
    assert "TCGA-CS-4938" in str(caught.value) and "Vital status" in str(caught.value)


def test_pathomic_text_in_genomic_column_names_file_row_and_id(tmp_path: Path) -> None:
    lines = shared_file(*PATHOMIC, "all_dataset.csv").read_text().split("\n")
    fields = lines[3].split(",")
    fields[8] = "amplified"
    lines[3] = ",".join(fields)
    dataset = tmp_path / "all_dataset.csv"
    dataset.write_text("\n".join(lines))
    with pytest.raises(ConfigError) as caught:
        read_pathomic_gbmlgg(dataset)
    message = str(caught.value)
    assert f"row 4 ({fields[0]}) = 'amplified'" in message and str(dataset) in message
    assert lines[0].split(",")[8] in message


# --- MCAT / PORPOISE --------------------------------------------------------------------------


def test_mcat_one_row_per_case(mcat: CohortTables) -> None:
    raw = pd.read_csv(shared_file(*MCAT, MCAT_TABLE))
    assert len(mcat.slides) == len(raw) == 539
    assert len(mcat.patients) == raw["case_id"].nunique() == 480
    assert mcat.patients["patient_id"].is_unique
    genomic = [c for c in raw.columns if c.endswith(("_cnv", "_mut", "_rnaseq"))]
    assert list(mcat.genomics.columns) == ["patient_id", *genomic]
    per_case = raw.drop_duplicates("case_id").set_index("case_id")
    genomics = mcat.genomics.set_index("patient_id")
    np.testing.assert_array_equal(genomics[genomic].to_numpy(), per_case.loc[genomics.index, genomic].to_numpy(dtype=float))
    patients = mcat.patients.set_index("patient_id")
    np.testing.assert_array_equal(
        patients["event"].to_numpy(dtype=int), 1 - per_case.loc[patients.index, "censorship"].to_numpy()
    )
    np.testing.assert_allclose(patients["survival_months"], per_case.loc[patients.index, "survival_months"])
    multi = raw["case_id"].value_counts()
    case = multi.index[multi > 1][0]
    assert (mcat.slides["patient_id"] == case).sum() == multi[case]
    assert list(mcat.clinical.columns) == ["patient_id", "age", "is_female", "oncotree_code"]
    assert mcat.clinical["oncotree_code"].dtype == "string"


def test_mcat_disagreeing_slides_of_a_case_raise(tmp_path: Path) -> None:
    raw = pd.read_csv(shared_file(*MCAT, MCAT_TABLE), index_col=0)
    counts = raw["case_id"].value_counts()
    case = counts.index[counts == 2][0]
    first, second = raw.index[raw["case_id"] == case]
    column = next(c for c in raw.columns if c.endswith("_cnv"))
    raw.loc[second, column] = raw.loc[second, column] + 1
    table = tmp_path / "table.csv"
    raw.to_csv(table)
    with pytest.raises(ConfigError) as caught:
        read_mcat(table)
    assert f"{case} (rows {first + 2}, {second + 2}: {column})" in str(caught.value)


def test_mcat_splits_are_5_folds_with_val_as_test(mcat: CohortTables) -> None:
    folds = mcat.splits
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    assert set(folds["split"]) == {"train", "test"}
    counts = folds.groupby(["fold", "split"]).size().unstack()
    assert (counts["train"] == 384).all() and (counts["test"] == 96).all()
    raw = pd.read_csv(shared_file(*MCAT, "splits", "splits_2.csv"))
    test = set(folds.loc[(folds["fold"] == 2) & (folds["split"] == "test"), "patient_id"])
    assert test == set(raw["val"].dropna())


def test_signatures_become_long_gene_groups(mcat: CohortTables) -> None:
    groups = read_signatures(shared_file(*MCAT, "datasets_csv_sig_signatures.csv"))
    assert list(groups.columns) == ["gene", "group"]
    assert set(groups["group"]) == {
        "tumor_suppressor_genes",
        "oncogenes",
        "protein_kinases",
        "cell_differentiation_markers",
        "transcription_factors",
        "cytokines_and_growth_factors",
    }
    assert not groups.duplicated().any()
    raw = pd.read_csv(shared_file(*MCAT, "datasets_csv_sig_signatures.csv"))
    assert set(groups.loc[groups["group"] == "oncogenes", "gene"]) == set(raw["Oncogenes"].dropna())
    assert "ABL1" in set(groups.loc[groups["group"] == "oncogenes", "gene"])
    assert "ABL1" in set(groups.loc[groups["group"] == "protein_kinases", "gene"])
    genes = {c.rsplit("_", 1)[0] for c in mcat.genomics.columns.drop("patient_id")}
    assert genes <= set(groups["gene"])


def test_mcat_zip_with_two_members_raises(tmp_path: Path) -> None:
    archive = tmp_path / "two.csv.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("a.csv", "case_id\n1\n")
        handle.writestr("b.csv", "case_id\n2\n")
    with pytest.raises(ConfigError, match="2 files"):
        read_mcat(archive)


# --- splits reconciliation --------------------------------------------------------------------


def test_split_patients_outside_the_cohort_raise_with_ids(tmp_path: Path) -> None:
    splits = tmp_path / "splits.csv"
    splits.write_text(",Randomization - 1,Randomization - 2\nP1,Train,Test\nP2,Test,Train\nGHOST,Train,Train\n")
    with pytest.raises(ConfigError, match="GHOST"):
        read_pnas_splits(splits, ["P1", "P2"])


def test_cohort_patients_in_no_part_are_counted_in_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    splits = tmp_path / "splits.csv"
    splits.write_text(",Randomization - 1,Randomization - 2\nP1,Train,Test\nP2,Test,\n")
    with caplog.at_level(logging.WARNING, logger="histofuse.cohorts"):
        folds = read_pnas_splits(splits, ["P1", "P2", "P3"])
    assert folds.groupby("fold").size().to_dict() == {0: 2, 1: 1}
    warning = " ".join(r.message for r in caplog.records if r.levelno == logging.WARNING)
    assert "0: 1" in warning and "1: 2" in warning


def test_pnas_split_values_other_than_train_test_raise(tmp_path: Path) -> None:
    splits = tmp_path / "splits.csv"
    splits.write_text(",Randomization - 1\nP1,Train\nP2,Validation\n")
    with pytest.raises(ConfigError, match=r"row 3 \(P2\) = 'Validation'"):
        read_pnas_splits(splits, ["P1", "P2"])


# --- BCNB ---------------------------------------------------------------------------------------


def test_bcnb_example_is_the_documented_generator_output(tmp_path: Path) -> None:
    if not BCNB_EXAMPLE.exists():
        pytest.fail(f"{BCNB_EXAMPLE} is missing; regenerate it with the command in its README.md")
    regenerated = write_synthetic_bcnb(tmp_path / "clinical.csv", 200, seed=0)
    assert regenerated.read_bytes() == BCNB_EXAMPLE.read_bytes()
    assert (
        "write_synthetic_bcnb('resources/examples/bcnb/clinical.csv', 200, seed=0)"
        in (BCNB_EXAMPLE.parent / "README.md").read_text()
    )


def test_bcnb_example_reads_with_binary_aln() -> None:
    cohort = read_cohort("bcnb", clinical=BCNB_EXAMPLE)
    raw = pd.read_csv(BCNB_EXAMPLE, dtype=str).set_index("Patient ID")
    patients = cohort.patients.set_index("patient_id")
    assert len(patients) == 200 and patients["aln"].dtype == "Int64"
    np.testing.assert_array_equal(
        patients["aln"].to_numpy(dtype=int), (raw.loc[patients.index, "ALN status"] != "N0").astype(int)
    )
    clinical = cohort.clinical
    assert set(clinical["er"].dropna()) <= {0.0, 1.0}
    assert set(clinical["her2_expression"].dropna()) <= {0.0, 1.0, 2.0, 3.0}


def test_bcnb_leaky_columns_are_dropped_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="histofuse.cohorts"):
        cohort = read_bcnb(BCNB_EXAMPLE)
    assert {"lymph_node_metastases", "surgery"}.isdisjoint(cohort.clinical.columns)
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Number of lymph node metastases" in m and "Surgical" in m for m in warnings)
    kept = read_bcnb(BCNB_EXAMPLE, keep_leaky=True)
    assert {"lymph_node_metastases", "surgery"} <= set(kept.clinical.columns)
    positive = kept.patients["aln"].to_numpy(dtype=int) == 1
    assert (kept.clinical.loc[positive, "lymph_node_metastases"] >= 1).all()


def test_synthetic_bcnb_is_seeded_and_carries_the_planted_signal(tmp_path: Path) -> None:
    pd.testing.assert_frame_equal(synthetic_bcnb(50, 3), synthetic_bcnb(50, 3))
    assert not synthetic_bcnb(50, 3).equals(synthetic_bcnb(50, 4))
    cohort = read_bcnb(write_synthetic_bcnb(tmp_path / "big.csv", 1000, seed=1))
    merged = cohort.patients.merge(cohort.clinical, on="patient_id")
    means = merged.groupby("aln")[["tumour_size_cm", "histological_grade", "ki67"]].mean()
    assert (means.loc[1] > means.loc[0]).all()


def test_ki67_text_is_parsed_and_unreadable_cells_counted(caplog: pytest.LogCaptureFixture) -> None:
    values = pd.Series(["30%", "<5%", "15", " 7.5 % ", ">90%", "10-20%", "n/a", "150%", pd.NA], index=range(2, 11))
    with caplog.at_level(logging.WARNING, logger="histofuse.cohorts"):
        parsed = parse_ki67(values, path="clinical.csv")
    expected = [30.0, 5.0, 15.0, 7.5, 90.0, 15.0, np.nan, np.nan, np.nan]
    np.testing.assert_array_equal(parsed.to_numpy(), np.array(expected))
    message = " ".join(r.message for r in caplog.records)
    assert "2 value(s)" in message and "row 8" in message and "row 9" in message


@given(st.text(max_size=12))
@settings(max_examples=200)
def test_ki67_never_crashes_and_stays_a_percentage(text: str) -> None:
    value = parse_ki67_text(text)
    assert value is None or 0.0 <= value <= 100.0


@given(st.decimals(min_value=0, max_value=100, places=2), st.sampled_from(["{}%", "{} %", "{}", "<{}%", ">{}%", "≤{}"]))
def test_ki67_numbers_parse_to_their_value(number: object, style: str) -> None:
    value = float(str(number))
    # a number below 1 without '%' is a fraction (BCNB's 0.3 = 30 %)
    expected = value * 100 if "%" not in style and 0 < value < 1 else value
    assert parse_ki67_text(style.format(number)) == pytest.approx(expected)


# --- generic tables and the dispatcher ---------------------------------------------------------


GENERIC_HEADER = ["pid", "sid", "who_grade", "os_days", "dead", "age", "sex", "g_TP53", "g_EGFR", "other"]


def _generic_text(rows: list[list[str]], ending: str = "\n", header: list[str] | None = None) -> str:
    lines = [",".join(header or GENERIC_HEADER), *(",".join(r) for r in rows)]
    return ending.join(lines) + ending


GENERIC_MAP = {
    "patient_id": "pid",
    "grade": "who_grade",
    "survival_time": "os_days",
    "time_unit": "days",
    "event": "dead",
    "genomic_prefix": "g_",
    "clinical_numeric": ["age"],
    "clinical_categorical": ["sex"],
}


def _generic_rows() -> list[list[str]]:
    return [
        ["P1", "S1", "II", "365.25", "1", "50", "F", "1", "-1", "x"],
        ["P2", "S2", "G3", "30.4375", "0", "61", "M", "0", "", "y"],
        ["P3", "S3", "", "NA", "", "", "", "2", "0", "z"],
    ]


def test_generic_reader_maps_roles(tmp_path: Path) -> None:
    path = tmp_path / "cohort.csv"
    path.write_text(_generic_text(_generic_rows()))
    cohort = read_cohort("generic", path=path, column_map=GENERIC_MAP)
    patients = cohort.patients
    assert list(patients.columns) == ["patient_id", "grade", "survival_months", "event"]
    assert patients["grade"].tolist()[:2] == ["2", "3"] and pd.isna(patients["grade"][2])
    np.testing.assert_allclose(patients["survival_months"][:2], [12.0, 1.0])
    assert pd.isna(patients["event"][2]) and patients["event"].tolist()[:2] == [1, 0]
    assert list(cohort.genomics.columns) == ["patient_id", "g_TP53", "g_EGFR"]
    assert list(cohort.clinical.columns) == ["patient_id", "age", "sex"]
    assert cohort.clinical["sex"].dtype == "string" and cohort.clinical["age"].dtype == np.float64
    assert cohort.slides is None


def test_generic_censored_and_years(tmp_path: Path) -> None:
    path = tmp_path / "cohort.tsv"
    path.write_text("id\tyears\talive\nA\t1.5\t1\nB\t2\t0\n")
    cohort = read_generic(path, {"patient_id": "id", "survival_time": "years", "time_unit": "years", "censored": "alive"})
    assert cohort.patients["survival_months"].tolist() == [18.0, 24.0]
    assert cohort.patients["event"].tolist() == [0, 1]


def test_generic_slide_rows_collapse_to_patients(tmp_path: Path) -> None:
    rows = _generic_rows()
    rows.append(["P1", "S1b", *rows[0][2:]])
    path = tmp_path / "cohort.csv"
    path.write_text(_generic_text(rows))
    cohort = read_generic(path, {**GENERIC_MAP, "slide_id": "sid"})
    assert len(cohort.patients) == 3 and len(cohort.slides) == 4
    assert cohort.slides.loc[cohort.slides["slide_id"] == "S1b", "patient_id"].item() == "P1"
    rows[-1][7] = "0"
    path.write_text(_generic_text(rows))
    with pytest.raises(ConfigError, match=r"P1 \(rows 2, 5: g_TP53\)"):
        read_generic(path, {**GENERIC_MAP, "slide_id": "sid"})


@pytest.mark.parametrize(
    ("row", "column", "value", "pattern"),
    [
        (1, 0, "P1", r"duplicate ids: row 2 \(P1\), row 3 \(P1\)"),
        (1, 2, "V", r"column 'who_grade'.*row 3 \(P2\) = 'V'"),
        (1, 4, "yes", r"column 'dead'.*row 3 \(P2\) = 'yes'"),
        (2, 5, "NaN", r"'age' at row 4 \(P3\) = 'NaN'"),
        (0, 7, "inf", r"'g_TP53' at row 2 \(P1\) = 'inf'"),
        (2, 8, "gain", r"'g_EGFR' at row 4 \(P3\) = 'gain'"),
        (0, 3, "-5", r"negative survival times: row 2 \(P1\)"),
    ],
)
def test_bad_generic_tables_name_rows_and_ids(tmp_path: Path, row: int, column: int, value: str, pattern: str) -> None:
    rows = _generic_rows()
    rows[row][column] = value
    path = tmp_path / "cohort.csv"
    path.write_text(_generic_text(rows))
    with pytest.raises(ConfigError, match=pattern) as caught:
        read_generic(path, GENERIC_MAP)
    assert str(path) in str(caught.value) and "Fix:" in str(caught.value)


def test_row_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "cohort.csv"
    rows = _generic_rows()
    rows[2][7] = "oops"
    text = _generic_text(rows).split("\n")
    path.write_text("\n".join([*text[:2], "", *text[2:]]))
    with pytest.raises(ConfigError, match=r"row 5 \(P3\) = 'oops'"):
        read_generic(path, GENERIC_MAP)


@pytest.mark.parametrize(
    ("mapping", "pattern"),
    [
        ({"patient_id": "pid", "survival_time": "os_days", "event": "dead"}, "time_unit"),
        ({"patient_id": "pid", "survival_time": "os_days", "time_unit": "weeks", "event": "dead"}, "weeks"),
        (
            {"patient_id": "pid", "survival_time": "os_days", "time_unit": "days", "event": "dead", "censored": "dead"},
            "exactly one",
        ),
        ({"patient_id": "pid", "event": "dead"}, "survival_time"),
        ({"patient_id": "pid", "grade": "pid"}, "two roles"),
        ({"patient_id": "pid", "colour": "x"}, "unknown key"),
        ({"patient_id": "pid", "clinical_numeric": "age"}, "list of column names"),
        ({"patient_id": "pid", "genomic_suffixes": None}, "list of column names"),
    ],
)
def test_column_map_rejects_unclear_maps(mapping: dict[str, object], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        ColumnMap.from_mapping(mapping)


def test_generic_genomic_selection_matching_nothing_raises(tmp_path: Path) -> None:
    path = tmp_path / "cohort.csv"
    path.write_text(_generic_text(_generic_rows()))
    with pytest.raises(ConfigError, match="genomic selection"):
        read_generic(path, {**GENERIC_MAP, "genomic_prefix": "rna_"})
    suffixed = read_generic(path, {"patient_id": "pid", "genomic_suffixes": ["TP53"]})
    assert list(suffixed.genomics.columns) == ["patient_id", "g_TP53"]


def test_cohort_tables_refuse_inconsistent_frames() -> None:
    patients = pd.DataFrame({"patient_id": ["P1", "P2"], "event": pd.array([1, None], dtype="Int64")})
    CohortTables(patients=patients, source="test")
    with pytest.raises(ConfigError, match="duplicate ids: P1"):
        CohortTables(patients=pd.DataFrame({"patient_id": ["P1", "P1"]}), source="test")
    with pytest.raises(ConfigError, match="unknown label column"):
        CohortTables(patients=patients.assign(stage="I"), source="test")
    with pytest.raises(ConfigError, match="'grade' must be"):
        CohortTables(patients=patients.assign(grade=pd.array(["2", "5"], dtype="string")), source="test")
    with pytest.raises(ConfigError, match="slides.*not in the patients table: P9"):
        CohortTables(patients=patients, slides=pd.DataFrame({"slide_id": ["S1"], "patient_id": ["P9"]}), source="test")
    with pytest.raises(ConfigError, match="'split' must be"):
        splits = pd.DataFrame({"patient_id": ["P1"], "fold": [0], "split": ["holdout"]})
        CohortTables(patients=patients, splits=splits, source="test")
    with pytest.raises(ConfigError, match="'x' must be float64"):
        CohortTables(patients=patients, genomics=pd.DataFrame({"patient_id": ["P1"], "x": [np.inf]}), source="test")


def test_read_cohort_fails_loudly_on_unknown_formats_and_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown cohort format 'tcga'.*pathomic_gbmlgg, mcat, bcnb, generic"):
        read_cohort("tcga", path=tmp_path)
    with pytest.raises(ConfigError, match="unknown option.*tabel.*missing table"):
        read_cohort("mcat", tabel=tmp_path / "x.csv")
    with pytest.raises(ConfigError, match="missing column_map"):
        read_cohort("generic", path=tmp_path / "x.csv")


# --- property-based: formatting of the file never changes the cohort ---------------------------

_cells = st.integers(min_value=-3, max_value=3).map(str) | st.just("")


@st.composite
def _generic_tables(draw: st.DrawFn) -> list[list[str]]:
    n = draw(st.integers(min_value=1, max_value=8))
    rows = []
    for i in range(n):
        rows.append(
            [
                f"P{i}",
                f"S{i}",
                draw(st.sampled_from(["2", "3", "4", "II", "IV", "G3", ""])),
                str(draw(st.integers(min_value=0, max_value=5000))),
                draw(st.sampled_from(["0", "1", ""])),
                draw(st.sampled_from(["40", "55.5", ""])),
                draw(st.sampled_from(["F", "M", ""])),
                draw(_cells),
                draw(_cells),
                "x",
            ]
        )
    return rows


def _read_text(text: str, name: str = "cohort.csv", mapping: dict[str, object] | None = None) -> CohortTables:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(text.encode())
        return read_generic(path, mapping or GENERIC_MAP)


def _assert_same(first: CohortTables, second: CohortTables) -> None:
    for table in ("patients", "genomics", "clinical", "slides"):
        a, b = getattr(first, table), getattr(second, table)
        assert (a is None) == (b is None)
        if a is not None:
            pd.testing.assert_frame_equal(a, b)


@given(_generic_tables(), st.sampled_from(["\r", "\r\n"]), st.booleans())
@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
def test_line_endings_do_not_change_the_cohort(rows: list[list[str]], ending: str, final_newline: bool) -> None:
    reference = _read_text(_generic_text(rows))
    text = _generic_text(rows, ending)
    other = _read_text(text if final_newline else text.removesuffix(ending))
    _assert_same(reference, other)


@given(_generic_tables().flatmap(lambda rows: st.tuples(st.just(rows), st.permutations(rows))))
@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
def test_row_order_does_not_change_the_cohort(tables: tuple[list[list[str]], list[list[str]]]) -> None:
    rows, shuffled = tables
    _assert_same(_read_text(_generic_text(rows)), _read_text(_generic_text(shuffled)))


@given(_generic_tables(), st.lists(st.integers(min_value=0, max_value=7), max_size=6))
@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow])
def test_repeating_slide_rows_keeps_the_patients(rows: list[list[str]], repeats: list[int]) -> None:
    mapping = {**GENERIC_MAP, "slide_id": "sid"}
    extra = [[rows[i % len(rows)][0], f"extra{k}", *rows[i % len(rows)][2:]] for k, i in enumerate(repeats)]
    single = _read_text(_generic_text(rows), mapping=mapping)
    repeated = _read_text(_generic_text(rows + extra), mapping=mapping)
    for table in ("patients", "genomics", "clinical"):
        pd.testing.assert_frame_equal(getattr(single, table), getattr(repeated, table))
    assert len(repeated.slides) == len(rows) + len(repeats)


def test_histofuse_is_a_format_of_the_registry_that_takes_no_options() -> None:
    from histofuse.cohorts.formats import FORMATS, check_format_options, format_parameters, is_published
    from histofuse.errors import ConfigError

    assert FORMATS[0] == "histofuse" and not is_published("histofuse") and is_published("mcat")
    assert format_parameters("histofuse") == {}
    check_format_options("histofuse", {})
    with pytest.raises(ConfigError, match="takes: no options"):
        check_format_options("histofuse", {"table": "x.csv"})
    with pytest.raises(ConfigError, match="use one of: histofuse, pathomic_gbmlgg"):
        is_published("tcga")

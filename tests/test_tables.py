"""Cohort tables: typing, label mapping and errors that name the rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from histofuse.errors import ConfigError
from histofuse.tables import TableInputs, prepare_tables


def _write(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, sep="\t" if path.suffix == ".tsv" else ",", index=False)
    return path


@pytest.fixture
def cohort(tmp_path: Path) -> dict[str, Path]:
    patients = pd.DataFrame(
        {
            "patient_id": ["P1", "P2", "P3", "P4"],
            "grade": ["2", "3", "", "4"],
            "survival_months": [10.0, 20.5, 3.0, np.nan],
            "event": ["1", "0", "1", ""],
        }
    )
    slides = pd.DataFrame(
        {"slide_id": ["S1", "S2", "S3", "S4"], "patient_id": ["P1", "P1", "P2", "P3"], "path": ["a.tiff", "b.tiff", "c.tiff", "/abs/d.tiff"]}
    )
    genomics = pd.DataFrame({"patient_id": ["P1", "P2", "P4"], "TP53_mut": [1, 0, 1], "EGFR_cnv": [2, "", -1]})
    groups = pd.DataFrame({"gene": ["TP53", "EGFR"], "group": ["tumor_suppressor", "oncogene"]})
    clinical = pd.DataFrame({"patient_id": ["P1", "P2", "P3", "P4"], "age": [50, 60, 70, 40], "sex": ["F", "M", "F", "M"]})
    return {
        "patients": _write(tmp_path / "patients.tsv", patients),
        "slides": _write(tmp_path / "slides.tsv", slides),
        "genomics": _write(tmp_path / "genomics.tsv", genomics),
        "gene_groups": _write(tmp_path / "groups.csv", groups),
        "clinical": _write(tmp_path / "clinical.tsv", clinical),
    }


def test_prepare_tables_types_and_labels(cohort: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "tables"
    prepare_tables(TableInputs(**cohort), out)
    patients = pd.read_parquet(out / "patients.parquet")
    assert patients["grade"].tolist()[:2] == [0, 1] and pd.isna(patients["grade"][2])
    assert patients["grade"].iloc[3] == 2
    assert patients["event"].dtype == "Int64" and pd.isna(patients["event"][3])
    slides = pd.read_parquet(out / "slides.parquet")
    assert slides["path"][0] == str(tmp_path / "a.tiff") and slides["path"][3] == "/abs/d.tiff"
    genomics = pd.read_parquet(out / "genomics.parquet")
    assert genomics.dtypes["EGFR_cnv"] == np.float64 and np.isnan(genomics["EGFR_cnv"][1])
    groups = pd.read_parquet(out / "gene_groups.parquet")
    assert dict(zip(groups["feature"], groups["group"], strict=True)) == {"TP53_mut": "tumor_suppressor", "EGFR_cnv": "oncogene"}
    clinical = pd.read_parquet(out / "clinical.parquet")
    assert clinical["age"].dtype == np.float64 and clinical["sex"].tolist() == ["F", "M", "F", "M"]
    assert json.loads((out / "labels.json").read_text())["grade"]["classes"] == ["2", "3", "4"]


def test_unknown_grade_lists_rows(cohort: dict[str, Path], tmp_path: Path) -> None:
    frame = pd.read_csv(cohort["patients"], sep="\t", dtype=str)
    frame.loc[1, "grade"] = "5"
    _write(cohort["patients"], frame)
    with pytest.raises(ConfigError) as err:
        prepare_tables(TableInputs(**cohort), tmp_path / "t")
    assert "row 3 (P2)" in str(err.value) and "grade" in str(err.value)


def test_text_in_genomics_names_row_and_column(cohort: dict[str, Path], tmp_path: Path) -> None:
    frame = pd.read_csv(cohort["genomics"], sep="\t", dtype=str)
    frame.loc[2, "TP53_mut"] = "yes"
    _write(cohort["genomics"], frame)
    with pytest.raises(ConfigError) as err:
        prepare_tables(TableInputs(**cohort), tmp_path / "t")
    text = str(err.value)
    assert "row 4 (P4)" in text and "'TP53_mut'" in text and str(cohort["genomics"]) in text


def test_slide_of_unknown_patient(cohort: dict[str, Path], tmp_path: Path) -> None:
    frame = pd.read_csv(cohort["slides"], sep="\t", dtype=str)
    frame.loc[0, "patient_id"] = "P9"
    _write(cohort["slides"], frame)
    with pytest.raises(ConfigError, match=r"row 2 \(S1\)"):
        prepare_tables(TableInputs(**cohort), tmp_path / "t")


def test_patient_without_any_modality(cohort: dict[str, Path], tmp_path: Path) -> None:
    frame = pd.read_csv(cohort["patients"], sep="\t", dtype=str)
    frame.loc[len(frame)] = ["P5", "2", "5", "1"]
    _write(cohort["patients"], frame)
    with pytest.raises(ConfigError, match="P5"):
        prepare_tables(TableInputs(**cohort), tmp_path / "t")


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5)), min_size=3, max_size=3))
def test_genomics_reader_accepts_finite_numbers_and_rejects_inf(tmp_path_factory: pytest.TempPathFactory, values: list[float]) -> None:
    root = tmp_path_factory.mktemp("g")
    patients = _write(root / "p.tsv", pd.DataFrame({"patient_id": ["A", "B", "C"], "grade": ["2", "3", "4"]}))
    genomics = _write(root / "g.tsv", pd.DataFrame({"patient_id": ["A", "B", "C"], "X_cnv": values}))
    inputs = TableInputs(slides=None, patients=patients, genomics=genomics)
    if any(np.isinf(float(v)) for v in values):
        with pytest.raises(ConfigError, match="X_cnv"):
            prepare_tables(inputs, root / "out")
    else:
        prepare_tables(inputs, root / "out")
        got = pd.read_parquet(root / "out" / "genomics.parquet")["X_cnv"].to_numpy()
        expected = np.array([float(v) for v in values])
        np.testing.assert_allclose(got, expected, rtol=1e-12, equal_nan=True)


def test_published_format_is_written_in_the_pipeline_layout(tmp_path: Path) -> None:
    from histofuse.cohorts import read_cohort
    from histofuse.tables import write_cohort_tables

    repo = Path(__file__).resolve().parents[1]
    cohort = read_cohort("bcnb", clinical=repo / "resources" / "examples" / "bcnb" / "clinical.csv")
    out = tmp_path / "tables"
    out.mkdir()
    outputs = write_cohort_tables(cohort, out, modalities=("clinical",))
    patients = pd.read_parquet(outputs["patients"])
    assert len(patients) == 200 and patients["aln"].dtype == "Int64"
    assert set(patients["aln"].dropna()) == {0, 1}
    labels = json.loads(outputs["labels"].read_text())
    assert labels["aln"] == {"classes": ["0", "1"]} and labels["source"] == "bcnb"
    clinical = pd.read_parquet(outputs["clinical"])
    assert len(clinical) == 200 and "Number of lymph node metastases" not in clinical.columns
    assert pd.read_parquet(outputs["slides"]).empty and list(pd.read_parquet(outputs["genomics"]).columns) == ["patient_id"]

    # a modality the cohort lacks leaves every patient without data: a stop that says so
    with pytest.raises(ConfigError, match="no data in the modalities used") as err:
        write_cohort_tables(cohort, out, modalities=("genomics",))
    assert "modalities" in str(err.value)
    with pytest.raises(ConfigError, match="unknown or none"):
        write_cohort_tables(cohort, out, modalities=("rna",))


def test_unused_modalities_are_written_empty(cohort: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "tables"
    prepare_tables(TableInputs(**cohort, modalities=("wsi", "clinical")), out)
    assert list(pd.read_parquet(out / "genomics.parquet").columns) == ["patient_id"]
    assert len(pd.read_parquet(out / "clinical.parquet")) == 4
    assert len(pd.read_csv(out / "cohort_splits.tsv", sep="\t")) == 0


def test_a_gene_group_list_replaces_the_formats_groups(tmp_path: Path) -> None:
    from histofuse.cohorts import CohortTables
    from histofuse.tables import write_cohort_tables

    ids = ["A", "B", "C"]
    cohort = CohortTables(
        patients=pd.DataFrame(
            {
                "patient_id": ids,
                "survival_months": [1.0, 2.0, 3.0],
                "event": pd.array([1, 0, 1], dtype="Int64"),
            }
        ),
        genomics=pd.DataFrame({"patient_id": ids, "TP53_cnv": [0.0, 1.0, 2.0], "CD8A_rnaseq": [1.0, 5.0, 9.0]}),
        gene_groups=pd.DataFrame({"gene": ["TP53", "CD8A"], "group": ["oncogenes", "cytokines"]}),
        source="mcat",
    )
    own = write_cohort_tables(cohort, tmp_path, modalities=("genomics",))
    assert set(pd.read_parquet(own["gene_groups"])["group"]) == {"oncogenes", "cytokines"}
    lists = tmp_path / "ksf.csv"
    lists.write_text("gene,group\nTP53,tumour\nCD8A,microenvironment\n")
    replaced = write_cohort_tables(cohort, tmp_path, modalities=("genomics",), gene_groups=lists)
    groups = pd.read_parquet(replaced["gene_groups"])
    assert dict(zip(groups["feature"], groups["group"], strict=True)) == {"TP53_cnv": "tumour", "CD8A_rnaseq": "microenvironment"}

"""Per-fold table preprocessing: fitted on the training part only, reused unchanged for the rest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from histofuse.errors import ConfigError
from histofuse.preprocess import FoldPreprocessing, PreprocessSettings, TableTransform, fit_fold_preprocessing


def _cohort(n: int = 40, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = [f"P{i:02d}" for i in range(n)]
    genomics = pd.DataFrame(
        {
            "patient_id": ids,
            "TP53_cnv": rng.integers(-2, 3, n).astype(float),
            "EGFR_rnaseq": rng.gamma(2.0, 50.0, n),
            "MYC_mut": rng.integers(0, 2, n).astype(float),
            "FLAT_cnv": np.ones(n),
        }
    )
    genomics.loc[[1, 4], "TP53_cnv"] = np.nan
    clinical = pd.DataFrame(
        {
            "patient_id": ids,
            "age": rng.normal(60, 10, n),
            "sex": pd.array(rng.choice(["F", "M"], n), dtype="string"),
        }
    )
    clinical.loc[3, "sex"] = pd.NA
    rows = pd.DataFrame({"patient_id": ids, "split": ["train"] * (n - 12) + ["val"] * 4 + ["test"] * 8})
    return genomics, clinical, rows


def _fit(genomics: pd.DataFrame, clinical: pd.DataFrame, rows: pd.DataFrame, **options) -> FoldPreprocessing:
    groups = pd.DataFrame({"feature": ["TP53_cnv", "EGFR_rnaseq", "MYC_mut", "TP53_cnv"], "group": ["supp", "onco", "onco", "onco"]})
    return fit_fold_preprocessing(
        fold=0,
        fold_rows=rows,
        genomics=genomics,
        clinical=clinical,
        gene_groups=groups,
        settings=PreprocessSettings(**options),
    )


def test_statistics_come_from_training_patients_only() -> None:
    genomics, clinical, rows = _cohort()
    fitted = _fit(genomics, clinical, rows)
    held_out = rows["split"] != "train"
    # overwrite every validation and test value with something extreme: nothing fitted may move
    poisoned_g = genomics.copy()
    poisoned_g.loc[held_out.to_numpy(), ["TP53_cnv", "EGFR_rnaseq", "MYC_mut"]] = 1e6
    poisoned_c = clinical.copy()
    poisoned_c.loc[held_out.to_numpy(), "age"] = -500.0
    poisoned_c.loc[held_out.to_numpy(), "sex"] = "unknown-sex"
    assert _fit(poisoned_g, poisoned_c, rows).to_json() == fitted.to_json()
    assert fitted.train_patients == tuple(sorted(rows.loc[~held_out, "patient_id"]))

    train = genomics[~held_out.to_numpy()]
    tp53 = next(c for c in fitted.genomics.numeric if c.name == "TP53_cnv")
    assert tp53.median == pytest.approx(train["TP53_cnv"].median())
    imputed = train["TP53_cnv"].fillna(train["TP53_cnv"].median())
    assert tp53.mean == pytest.approx(imputed.mean()) and tp53.std == pytest.approx(imputed.std(ddof=0))


def test_transform_imputes_scales_log_transforms_and_one_hot_encodes() -> None:
    genomics, clinical, rows = _cohort()
    fitted = _fit(genomics, clinical, rows)
    # the constant column is dropped; TP53 had gaps in the train part, so it gets an indicator
    assert fitted.genomics.output_columns == ("TP53_cnv", "EGFR_rnaseq", "MYC_mut", "TP53_cnv__missing")
    assert fitted.clinical.output_columns == ("age", "sex=F", "sex=M", "sex__missing")
    values = fitted.genomics.transform(genomics.set_index("patient_id"))
    train = (rows["split"] == "train").to_numpy()
    assert np.allclose(values[train, :3].mean(axis=0), 0, atol=1e-5)
    assert np.allclose(values[train, :3].std(axis=0), 1, atol=1e-4)
    expression = np.log1p(genomics["EGFR_rnaseq"].to_numpy())
    expected = (expression - expression[train].mean()) / expression[train].std()
    assert np.allclose(values[:, 1], expected, atol=1e-5)
    assert values[1, 3] == 1.0 and values[0, 3] == 0.0
    clinical_values = fitted.clinical.transform(clinical.set_index("patient_id"))
    assert clinical_values[3, 3] == 1.0 and clinical_values[3, 1:3].sum() == 1.0  # mode-imputed
    unseen = clinical.set_index("patient_id").assign(sex="X")
    assert (fitted.clinical.transform(unseen)[:, 1:3] == 0).all()


def test_gene_groups_follow_the_output_columns() -> None:
    genomics, clinical, rows = _cohort()
    fitted = _fit(genomics, clinical, rows)
    # TP53 is in two groups; its missing-indicator follows it
    assert fitted.genomic_groups == {"onco": (0, 1, 2, 3), "supp": (0, 3)}


def test_top_k_keeps_the_most_variable_columns() -> None:
    genomics, clinical, rows = _cohort()
    fitted = _fit(genomics, clinical, rows, top_k_genomic=1, log1p_suffixes=())
    assert [c.name for c in fitted.genomics.numeric] == ["EGFR_rnaseq"]


def test_round_trip_through_json() -> None:
    genomics, clinical, rows = _cohort()
    fitted = _fit(genomics, clinical, rows)
    again = FoldPreprocessing.from_json(fitted.to_json())
    assert again.to_json() == fitted.to_json()
    frame = genomics.set_index("patient_id")
    assert np.array_equal(again.genomics.transform(frame), fitted.genomics.transform(frame))
    with pytest.raises(ConfigError, match="rerun the preprocessing"):
        FoldPreprocessing.from_json('{"version": 99}')


def test_settings_fail_loudly() -> None:
    with pytest.raises(ConfigError, match="top_k_genomic"):
        PreprocessSettings(top_k_genomic=0)
    with pytest.raises(ConfigError, match="unknown preprocessing key"):
        PreprocessSettings.from_mapping({"top_k": 3})


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6)), min_size=3, max_size=30),
    st.floats(-1e9, 1e9),
)
def test_any_numeric_column_gives_finite_bounded_outputs(values: list[float | None], probe: float) -> None:
    train = pd.DataFrame({"x": pd.array(values, dtype="Float64").astype("float64")})
    transform = TableTransform.fit(train, clip=10.0)
    out = transform.transform(pd.DataFrame({"x": [probe, np.nan, np.inf]}))
    assert np.isfinite(out).all() and (np.abs(out) <= 10.0).all()


def test_log1p_only_where_the_training_values_are_non_negative() -> None:
    genomics, clinical, rows = _cohort()
    genomics["CD8A_rnaseq"] = np.linspace(-3.0, 40.0, len(genomics))  # centred somewhere else: not z-scores
    fitted = _fit(genomics, clinical, rows)
    by_name = {c.name: c for c in fitted.genomics.numeric}
    assert by_name["EGFR_rnaseq"].log1p and not by_name["CD8A_rnaseq"].log1p
    assert any("log1p skipped on 1 column(s)" in n and "CD8A_rnaseq" in n for n in fitted.notes)
    out = fitted.genomics.transform(genomics.set_index("patient_id"))
    column = fitted.genomics.output_columns.index("CD8A_rnaseq")
    # negatives keep their order instead of all becoming log1p(0)
    assert len(np.unique(out[:5, column])) == 5


def test_a_z_scored_group_is_left_as_it_is_and_noted() -> None:
    genomics, clinical, rows = _cohort(n=60, seed=2)
    genomics = genomics.drop(columns="EGFR_rnaseq")  # MCAT publishes every expression column as z-scores
    rng = np.random.default_rng(7)
    z = rng.normal(size=(60, 8))
    for j in range(8):
        genomics[f"G{j}_rnaseq"] = (z[:, j] - z[:, j].mean()) / z[:, j].std()
    fitted = _fit(genomics, clinical, rows)
    numeric = {c.name: c for c in fitted.genomics.numeric}
    for j in range(8):
        column = numeric[f"G{j}_rnaseq"]
        assert not column.log1p and (column.mean, column.std) == (0.0, 1.0)
    assert numeric["TP53_cnv"].std != 1.0  # copy-number calls (whole numbers) are not taken for z-scores
    assert fitted.notes == (
        "genomic columns '*_rnaseq' (8) are already standardised (training mean ≈ 0, deviation ≈ 1): "
        "left as they are, without log1p or rescaling",
    )
    out = fitted.genomics.transform(genomics.set_index("patient_id"))
    np.testing.assert_allclose(out[:, fitted.genomics.output_columns.index("G0_rnaseq")], genomics["G0_rnaseq"], atol=1e-6)
    assert FoldPreprocessing.from_json(fitted.to_json()).notes == fitted.notes

"""The methods cohort: tables, determinism, the generative model's structure and the two compartments."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
from scipy import stats

from histofuse.demo import GENE_GROUPS, DemoSpec, _rng, _tissue_field
from histofuse.demo_methods import (
    MethodsSlide,
    _nest_field,
    _nuclei,
    draw_methods_patients,
    make_methods_cohort,
    make_methods_tables,
    methods_spec,
    plan_methods_slides,
)

TINY = DemoSpec(n_patients=3, n_slides=4, min_side_px=512, max_side_px=768)


def test_tables_have_the_expected_columns() -> None:
    tables = make_methods_tables(methods_spec())
    patients, clinical, genomics = tables["patients"], tables["clinical"], tables["genomics"]
    assert len(patients) == 120 and len(tables["slides"]) == 128
    assert list(patients.columns) == ["patient_id", "grade", "survival_months", "event", "aln"]
    assert set(patients["grade"]) == {2, 3, 4} and set(patients["aln"]) == {0, 1}
    assert list(clinical.columns) == ["patient_id", "age", "sex", "tumour_size_mm"]
    assert (clinical["tumour_size_mm"] > 0).all()
    assert genomics.shape[1] == 1 + 3 * len(GENE_GROUPS)
    assert tables["gene_groups"].values.tolist() == [list(pair) for pair in GENE_GROUPS]


def test_same_spec_same_tables_and_patients_do_not_depend_on_cohort_size() -> None:
    first, second = make_methods_tables(methods_spec()), make_methods_tables(methods_spec())
    for name in first:
        pd.testing.assert_frame_equal(first[name], second[name])
    small = draw_methods_patients(dataclasses.replace(methods_spec(), n_patients=10, n_slides=10))
    assert small == draw_methods_patients(methods_spec())[:10]
    other = make_methods_tables(methods_spec(seed=3))["patients"]
    assert not other.equals(first["patients"])


def test_grade_needs_slide_and_genomic_factors() -> None:
    patients = draw_methods_patients(DemoSpec(n_patients=2000, n_slides=2000))
    latent = pd.DataFrame([p.latent for p in patients])
    grade = np.array([p.grade for p in patients])
    for factor in ("m", "t"):  # each carries part of the grade, neither all of it
        rho = stats.spearmanr(grade, latent[factor]).statistic
        assert 0.4 < rho < 0.8, (factor, rho)
    both = stats.spearmanr(grade, latent["m"] + latent["t"]).statistic
    assert both > 0.85
    for factor in ("i", "e", "s"):
        assert abs(stats.spearmanr(grade, latent[factor]).statistic) < 0.1
    aln = np.array([p.aln for p in patients])
    # the clinical factor s and the slide factor m each raise aln
    assert stats.pointbiserialr(aln, latent["s"]).statistic > 0.2
    assert stats.pointbiserialr(aln, latent["m"]).statistic > 0.2


def _opacity(plan: MethodsSlide, **latent: float) -> tuple[float, float]:
    """Mean haematoxylin opacity in the nests and in the stroma of ``plan`` with ``latent`` changed."""
    plan = dataclasses.replace(plan, latent={**plan.latent, **latent})
    rng = _rng(plan.seed, 99, plan.patient_index)
    coarse = (int(np.ceil(plan.height / 32)), int(np.ceil(plan.width / 32)))
    tissue = _tissue_field(rng, coarse)
    nests = _nest_field(rng, tissue)
    alpha = _nuclei(rng, plan, tissue, nests).astype(float)
    nest_px = np.kron(nests > 0.5, np.ones((32, 32), dtype=bool))[: plan.height, : plan.width]
    stroma_px = np.kron((nests < 0.1) & (tissue > 0.9), np.ones((32, 32), dtype=bool))[: plan.height, : plan.width]
    return float(alpha[nest_px].mean()), float(alpha[stroma_px].mean())


def test_nests_follow_tumour_morphology_and_stroma_the_infiltrate() -> None:
    spec = dataclasses.replace(methods_spec(), min_side_px=1536, max_side_px=1536)
    plan = plan_methods_slides(spec, draw_methods_patients(spec))[0]
    neutral = {"m": 0.0, "i": 0.0}
    nest, stroma = _opacity(plan, **neutral)
    nest_high_m, stroma_high_m = _opacity(plan, m=1.5, i=0.0)
    nest_high_i, stroma_high_i = _opacity(plan, m=0.0, i=1.5)
    assert nest_high_m > 1.2 * nest and abs(stroma_high_m - stroma) < 0.1 * stroma
    assert stroma_high_i > 1.5 * stroma and abs(nest_high_i - nest) < 0.1 * nest
    assert nest > 2 * stroma  # crowded nests, sparse stroma


def test_cohort_is_written_and_opens(tmp_path: Path) -> None:
    paths = make_methods_cohort(tmp_path / "cohort", TINY)
    slides = pd.read_csv(paths["slides_sheet"], sep="\t")
    assert len(slides) == 4
    for relative in slides["path"]:
        with openslide.OpenSlide(str(paths["slides_sheet"].parent / relative)) as slide:
            assert slide.level_count >= 3 and slide.properties[openslide.PROPERTY_NAME_MPP_X].startswith("0.5")
    patients = pd.read_csv(paths["patients_sheet"], sep="\t")
    assert "aln" in patients.columns


def test_the_patients_sheet_carries_binary_labels() -> None:
    import pytest

    from histofuse.errors import ConfigError
    from histofuse.tables import build_patients

    sheet = make_methods_tables(methods_spec())["patients"]
    patients = build_patients(sheet, path=Path("patients.tsv"), grade_classes=["2", "3", "4"])
    assert patients["aln"].tolist() == sheet["aln"].tolist() and str(patients["aln"].dtype) == "Int64"
    sheet.loc[4, "aln"] = 2
    with pytest.raises(ConfigError, match="aln values other than 0, 1 or empty: row 6"):
        build_patients(sheet, path=Path("patients.tsv"), grade_classes=["2", "3", "4"])

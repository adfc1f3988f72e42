from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines.utils import concordance_index
from scipy.stats import spearmanr

from histofuse.demo import (
    DemoSpec,
    draw_patients,
    make_demo_cohort,
    make_demo_tables,
    plan_slides,
    pyramid_levels,
    render_slide,
)
from histofuse.slides.reader import open_slide

TINY = DemoSpec(n_patients=3, n_slides=4, min_side_px=768, max_side_px=1024, seed=7)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_demo_cohort(tmp_path_factory.mktemp("demo"), DemoSpec.reduced())


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="," if path.suffix == ".csv" else "\t")


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="n_slides"):
        DemoSpec(n_patients=5, n_slides=11)
    with pytest.raises(ValueError, match="min_side_px"):
        DemoSpec(min_side_px=4096, max_side_px=2048)
    reduced = DemoSpec.reduced()
    assert (reduced.n_patients, reduced.n_slides) == (30, 34)


def test_tables_have_expected_columns(cohort: dict[str, Path]) -> None:
    slides = _read(cohort["slides_sheet"])
    patients = _read(cohort["patients_sheet"])
    genomics = _read(cohort["genomics"])
    groups = _read(cohort["gene_groups"])
    clinical = _read(cohort["clinical"])

    assert list(slides.columns) == ["slide_id", "patient_id", "path"]
    assert len(slides) == 34 and slides.slide_id.is_unique
    assert set(slides.patient_id) == set(patients.patient_id)
    assert slides.path.str.match(r"^slides/DEMO-P\d{3}-[AB]\.tiff$").all()
    assert (slides.patient_id.value_counts() <= 2).all()

    assert list(patients.columns) == ["patient_id", "grade", "survival_months", "event"]
    assert len(patients) == 30 and patients.patient_id.str.match(r"^DEMO-P\d{3}$").all()
    assert set(patients.grade.dropna().astype(int)) == {2, 3, 4}
    assert 1 <= patients.grade.isna().sum() <= 3
    assert (patients.survival_months > 0).all()
    assert set(patients.event) <= {0, 1}

    assert genomics.columns[0] == "patient_id" and len(genomics.columns) == 37
    features = genomics.drop(columns="patient_id")
    assert features.dtypes.map(pd.api.types.is_numeric_dtype).all()
    cnv = features.filter(like="_cnv").stack()
    mut = features.filter(like="_mut").stack()
    rna = features.filter(like="_rnaseq").stack()
    assert set(cnv) <= {-2, -1, 0, 1, 2} and set(mut) <= {0, 1} and (rna > 0).all()
    assert 0 < features.isna().to_numpy().mean() < 0.03

    assert list(groups.columns) == ["gene", "group"]
    assert set(groups.group) == {"tumor_suppressor", "oncogene", "immune", "stroma"}
    genes = {column.rsplit("_", 1)[0] for column in features.columns}
    assert genes == set(groups.gene)

    assert list(clinical.columns) == ["patient_id", "age", "sex"]
    assert set(clinical.sex) <= {"F", "M"} and clinical.age.between(30, 88).all()


def test_every_slide_opens(cohort: dict[str, Path]) -> None:
    slides = _read(cohort["slides_sheet"])
    sheet_dir = cohort["slides_sheet"].parent
    spec = DemoSpec.reduced()
    for path in slides.path:
        with open_slide(sheet_dir / path) as reader:
            info = reader.info
            assert info.level_count >= 3
            assert info.mpp == pytest.approx(0.5)
            assert spec.min_side_px <= min(info.width, info.height)
            assert max(info.width, info.height) <= spec.max_side_px
    assert not list(cohort["slides_dir"].glob(".*"))  # no temporary files left behind


def test_nuclear_density_tracks_grade(cohort: dict[str, Path]) -> None:
    slides = _read(cohort["slides_sheet"]).merge(_read(cohort["patients_sheet"]), on="patient_id")
    slides = slides[slides.grade.notna()]
    dark = []
    for path in slides.path:
        with open_slide(cohort["slides_sheet"].parent / path) as reader:
            thumb, _ = reader.thumbnail_at_mpp(2.0)
        tissue = thumb.astype(int).mean(axis=-1) < 225
        assert 0.15 < tissue.mean() < 0.7
        dark.append(float((thumb[..., 0][tissue] < 170).mean()))
    rho = spearmanr(slides.grade, dark).statistic
    means = pd.Series(dark, index=slides.index).groupby(slides.grade).mean()
    assert rho > 0.5
    assert means.is_monotonic_increasing


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    first = make_demo_cohort(tmp_path / "a", TINY)
    second = make_demo_cohort(tmp_path / "b", TINY, workers=2)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 5 + 4
    for relative in files_a:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative
    assert set(first) == set(second) == {
        "slides_sheet",
        "patients_sheet",
        "genomics",
        "gene_groups",
        "clinical",
        "slides_dir",
    }


def test_other_seed_differs() -> None:
    a = make_demo_tables(TINY)["patients"]
    b = make_demo_tables(dataclasses.replace(TINY, seed=8))["patients"]
    assert not a.equals(b)


def test_patients_do_not_depend_on_cohort_size() -> None:
    small = draw_patients(DemoSpec(n_patients=10, n_slides=10))
    large = draw_patients(DemoSpec(n_patients=25, n_slides=25))
    for a, b in zip(small, large, strict=False):
        fields = ("z", "grade", "age", "sex", "survival_months", "event")
        assert [getattr(a, f) for f in fields] == [getattr(b, f) for f in fields]


def test_rendering_is_independent_of_order() -> None:
    plans = plan_slides(TINY, draw_patients(TINY))
    later = render_slide(plans[-1])
    render_slide(plans[0])
    assert np.array_equal(render_slide(plans[-1]), later)


def test_survival_follows_grade() -> None:
    patients = make_demo_tables(DemoSpec())["patients"]
    known = patients[patients.grade.notna()]
    c_index = concordance_index(known.survival_months, -known.grade.astype(float), known.event)
    assert c_index > 0.65
    assert 0.15 < 1 - patients.event.mean() < 0.5


def test_pyramid_levels() -> None:
    assert pyramid_levels(1536, 2304) == 3
    assert pyramid_levels(4096, 8192) == 4
    assert pyramid_levels(8192, 8192) == 5

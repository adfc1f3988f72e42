"""Patient-level folds: complete, disjoint, stratified and reproducible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histofuse.errors import ConfigError
from histofuse.folds import FoldSettings, folds_from_cohort_splits, make_folds


def _patients(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    grade = pd.array(rng.integers(0, 3, n), dtype="Int64")
    grade[:3] = pd.NA
    return pd.DataFrame(
        {
            "patient_id": [f"P{i:03d}" for i in range(n)],
            "grade": grade,
            "event": pd.array(rng.integers(0, 2, n), dtype="Int64"),
        }
    )


def test_each_patient_tested_once_and_parts_disjoint() -> None:
    patients = _patients()
    folds = make_folds(patients, FoldSettings(k=5, seed=1))
    tests = folds[folds["split"] == "test"]
    assert sorted(tests["patient_id"]) == sorted(patients["patient_id"])
    for _, part in folds.groupby("fold"):
        assert len(part) == len(patients)
        assert part["patient_id"].is_unique
        assert set(part["split"]) == {"train", "val", "test"}
        val_share = (part["split"] == "val").sum() / (part["split"] != "test").sum()
        assert 0.1 < val_share < 0.3


def test_folds_are_stratified_on_grade() -> None:
    patients = _patients(n=90)
    folds = make_folds(patients, FoldSettings(k=3, seed=0)).merge(patients, on="patient_id")
    overall = patients["grade"].value_counts(normalize=True, dropna=False)
    for _, part in folds[folds["split"] == "test"].groupby("fold"):
        share = part["grade"].value_counts(normalize=True, dropna=False)
        assert (share.reindex(overall.index).fillna(0) - overall).abs().max() < 0.1


def test_folds_are_seeded() -> None:
    patients = _patients()
    a = make_folds(patients, FoldSettings(seed=3))
    b = make_folds(patients, FoldSettings(seed=3))
    c = make_folds(patients, FoldSettings(seed=4))
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_too_few_patients() -> None:
    with pytest.raises(ConfigError, match="too few"):
        make_folds(_patients(n=6), FoldSettings(k=5))


def _cohort_splits(patients: pd.DataFrame, n_folds: int, *, with_val: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    rows = []
    for fold in range(n_folds):
        test = set(rng.choice(patients["patient_id"], size=len(patients) // 5, replace=False))
        for pid in patients["patient_id"]:
            split = "test" if pid in test else ("val" if with_val and rng.random() < 0.2 else "train")
            rows.append((pid, fold, split))
    return pd.DataFrame(rows, columns=["patient_id", "fold", "split"])


def test_cohort_splits_keep_the_test_parts_and_carve_validation() -> None:
    patients = _patients(n=80)
    splits = _cohort_splits(patients, 4)
    settings = FoldSettings(k=3, seed=0, source="cohort", val_fraction=0.25)
    folds = folds_from_cohort_splits(splits, patients, settings)
    assert sorted(folds["fold"].unique()) == [0, 1, 2]
    for fold in range(3):
        given = splits[splits["fold"] == fold]
        ours = folds[folds["fold"] == fold]
        # the published test part is kept exactly; validation comes out of the training part only
        assert set(ours.loc[ours["split"] == "test", "patient_id"]) == set(given.loc[given["split"] == "test", "patient_id"])
        assert set(ours.loc[ours["split"] != "test", "patient_id"]) == set(given.loc[given["split"] == "train", "patient_id"])
        n_val = (ours["split"] == "val").sum()
        assert n_val == pytest.approx(0.25 * (given["split"] == "train").sum(), abs=1)
    pd.testing.assert_frame_equal(folds, folds_from_cohort_splits(splits, patients, settings))


def test_cohort_splits_with_a_validation_part_keep_it() -> None:
    patients = _patients(n=50)
    splits = _cohort_splits(patients, 2, with_val=True)
    folds = folds_from_cohort_splits(splits, patients, FoldSettings(k=2, source="cohort"))
    merged = folds.merge(splits, on=["patient_id", "fold"], suffixes=("", "_given"))
    assert (merged["split"] == merged["split_given"]).all()


def test_cohort_splits_drop_patients_left_out_of_the_tables() -> None:
    patients = _patients(n=40)
    splits = _cohort_splits(patients, 2)
    kept = patients.iloc[5:]
    folds = folds_from_cohort_splits(splits, kept, FoldSettings(k=2, source="cohort"))
    assert set(folds["patient_id"]) == set(kept["patient_id"])


def test_asking_for_more_cohort_folds_than_given_fails_loudly() -> None:
    patients = _patients(n=40)
    with pytest.raises(ConfigError, match="hold 2 folds"):
        folds_from_cohort_splits(_cohort_splits(patients, 2), patients, FoldSettings(k=3, source="cohort"))
    with pytest.raises(ConfigError, match="no split files"):
        folds_from_cohort_splits(
            pd.DataFrame(columns=["patient_id", "fold", "split"]), patients, FoldSettings(k=2, source="cohort")
        )
    with pytest.raises(ConfigError, match="folds.source"):
        FoldSettings(source="random")


def test_stratify_on_another_label() -> None:
    patients = _patients(n=90).assign(aln=pd.array(np.tile([0, 0, 1], 30), dtype="Int64"))
    folds = make_folds(patients, FoldSettings(k=3, seed=2, stratify="aln"))
    tests = folds[folds["split"] == "test"].merge(patients, on="patient_id")
    assert tests.groupby("fold")["aln"].sum().tolist() == [10, 10, 10]

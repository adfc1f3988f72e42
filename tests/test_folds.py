"""Patient-level folds: complete, disjoint, stratified and reproducible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histofuse.errors import ConfigError
from histofuse.folds import FoldSettings, make_folds


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

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines.utils import concordance_index
from sklearn.metrics import accuracy_score, roc_auc_score

from histofuse.errors import HistofuseError
from histofuse.evaluate import (
    FOLD_COLUMNS,
    SUMMARY_COLUMNS,
    evaluate_predictions,
    run_evaluate,
    summarise,
)

N_CLASSES = 3
SPLITS = ["train"] * 24 + ["val"] * 6 + ["test"] * 12


def make_predictions(
    model: str, fold: int, *, survival: bool = True, seed: int = 0
) -> pd.DataFrame:
    """Predictions of one model and fold: informative scores, a few missing labels."""
    rng = np.random.default_rng(seed)
    n = len(SPLITS)
    grade = rng.integers(0, N_CLASSES, size=n)
    logits = rng.normal(size=(n, N_CLASSES)) + 1.5 * np.eye(N_CLASSES)[grade]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    time = rng.exponential(40.0, size=n)
    frame = pd.DataFrame(
        {
            "patient_id": [f"P{fold}-{i:03d}" for i in range(n)],
            "fold": fold,
            "split": SPLITS,
            "model": model,
            "grade": pd.array(grade, dtype="Int64"),
            "grade_pred": probs.argmax(axis=1),
        }
    )
    for k in range(N_CLASSES):
        frame[f"grade_prob_{k}"] = probs[:, k]
    test_index = np.flatnonzero(frame["split"] == "test")
    frame.loc[test_index[0], "grade"] = pd.NA
    if survival:
        frame["survival_time"] = time
        frame["event"] = pd.array((rng.random(n) < 0.6).astype(int), dtype="Int64")
        frame["risk"] = -np.log(time) + rng.normal(0.0, 0.7, size=n)
        frame.loc[test_index[1], "event"] = pd.NA
    return frame


def write_predictions(root: Path, frames: list[pd.DataFrame]) -> list[Path]:
    paths = []
    for frame in frames:
        path = (
            root / "predictions" / frame["model"].iloc[0] / f"fold{frame['fold'].iloc[0]}.parquet"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
        paths.append(path)
    return paths


def synthetic_frames() -> list[pd.DataFrame]:
    frames = []
    for fold in range(3):
        frames.append(make_predictions("attn_mil", fold, seed=fold))
        frames.append(make_predictions("mean_pool", fold, survival=False, seed=10 + fold))
    return frames


def with_garbage_in_train(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = frame.copy()
    train = frame["split"] == "train"
    n = int(train.sum())
    frame.loc[train, "grade"] = rng.integers(0, N_CLASSES, size=n)
    frame.loc[train, "grade_pred"] = rng.integers(0, N_CLASSES, size=n)
    for k in range(N_CLASSES):
        frame.loc[train, f"grade_prob_{k}"] = rng.random(n)
    if "risk" in frame:
        frame.loc[train, "risk"] = rng.normal(0, 1000, size=n)
        frame.loc[train, "survival_time"] = rng.random(n)
    return frame


def test_folds_table_columns_and_values(tmp_path: Path) -> None:
    frames = synthetic_frames()
    table = evaluate_predictions(write_predictions(tmp_path, frames))
    assert list(table.columns) == list(FOLD_COLUMNS)
    # 3 folds x (4 grade metrics) for both models + 3 folds x cindex for the survival model.
    assert len(table) == 3 * 4 * 2 + 3
    assert set(table.loc[table["model"] == "mean_pool", "task"]) == {"grade"}
    assert set(table["metric"]) == {"cindex", "auc", "accuracy", "balanced_accuracy", "f1_macro"}

    frame = frames[0]  # attn_mil fold 0
    test = frame[frame["split"] == "test"]
    graded = test[test["grade"].notna()]
    surv = test[test["event"].notna()]

    def value(metric: str) -> pd.Series:
        rows = table[
            (table["model"] == "attn_mil") & (table["fold"] == 0) & (table["metric"] == metric)
        ]
        assert len(rows) == 1
        return rows.iloc[0]

    probs = graded[[f"grade_prob_{k}" for k in range(N_CLASSES)]].to_numpy()
    y = graded["grade"].to_numpy(dtype=int)
    assert value("auc")["value"] == pytest.approx(
        roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=[0, 1, 2])
    )
    assert value("accuracy")["value"] == pytest.approx(accuracy_score(y, graded["grade_pred"]))
    assert value("auc")["n"] == len(test) - 1
    assert value("cindex")["value"] == pytest.approx(
        concordance_index(surv["survival_time"], -surv["risk"], surv["event"].astype(int))
    )
    assert value("cindex")["n"] == len(test) - 1


def test_only_test_rows_are_used(tmp_path: Path) -> None:
    frames = synthetic_frames()
    clean = evaluate_predictions(write_predictions(tmp_path / "clean", frames))
    noisy_frames = [with_garbage_in_train(frame, seed) for seed, frame in enumerate(frames)]
    noisy = evaluate_predictions(write_predictions(tmp_path / "noisy", noisy_frames))
    pd.testing.assert_frame_equal(clean, noisy)

    # Changing test rows does change the result.
    shuffled = [frame.copy() for frame in frames]
    test = shuffled[0]["split"] == "test"
    shuffled[0].loc[test, "risk"] = shuffled[0].loc[test, "risk"].to_numpy()[::-1]
    changed = evaluate_predictions(write_predictions(tmp_path / "changed", shuffled))
    assert not np.allclose(changed["value"], clean["value"], equal_nan=True)


def test_summary_matches_numpy(tmp_path: Path) -> None:
    table = evaluate_predictions(write_predictions(tmp_path, synthetic_frames()))
    summary = summarise(table)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert len(summary) == 2 * 4 + 1
    for row in summary.itertuples(index=False):
        values = table[
            (table["model"] == row.model)
            & (table["task"] == row.task)
            & (table["metric"] == row.metric)
        ]["value"].to_numpy()
        assert row.n_folds == 3
        assert row.mean == pytest.approx(np.mean(values))
        assert row.sd == pytest.approx(np.std(values, ddof=1))


def test_summary_drops_nan_folds() -> None:
    table = pd.DataFrame(
        {
            "model": ["m"] * 5,
            "task": ["survival"] * 3 + ["grade"] * 2,
            "metric": ["cindex"] * 3 + ["auc"] * 2,
            "fold": [0, 1, 2, 0, 1],
            "value": [0.6, float("nan"), 0.7, float("nan"), float("nan")],
            "n": [10, 10, 10, 10, 10],
        }
    )
    summary = summarise(table).set_index(["task", "metric"])
    cindex = summary.loc[("survival", "cindex")]
    assert cindex["n_folds"] == 2
    assert cindex["mean"] == pytest.approx(0.65)
    assert cindex["sd"] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    auc = summary.loc[("grade", "auc")]
    assert auc["n_folds"] == 0
    assert math.isnan(auc["mean"]) and math.isnan(auc["sd"])


def test_summary_of_empty_table() -> None:
    empty = pd.DataFrame(columns=list(FOLD_COLUMNS))
    assert list(summarise(empty).columns) == list(SUMMARY_COLUMNS)


def test_run_evaluate_writes_tsvs(tmp_path: Path) -> None:
    files = write_predictions(tmp_path, synthetic_frames())
    out_folds = tmp_path / "metrics" / "folds.tsv"
    out_summary = tmp_path / "metrics" / "summary.tsv"
    run_evaluate(prediction_files=files, out_folds=out_folds, out_summary=out_summary)
    folds = pd.read_csv(out_folds, sep="\t")
    summary = pd.read_csv(out_summary, sep="\t")
    assert list(folds.columns) == list(FOLD_COLUMNS)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    expected = summarise(evaluate_predictions(files))
    np.testing.assert_allclose(summary["mean"], expected["mean"], rtol=1e-12)
    np.testing.assert_allclose(summary["sd"], expected["sd"], rtol=1e-12)
    assert not list(out_folds.parent.glob(".*.tmp"))


def test_fold_without_events_gives_nan(tmp_path: Path) -> None:
    frame = make_predictions("m", 0)
    frame["event"] = pd.array([0] * len(frame), dtype="Int64")
    table = evaluate_predictions(write_predictions(tmp_path, [frame]))
    cindex = table[table["metric"] == "cindex"].iloc[0]
    assert math.isnan(cindex["value"])
    assert summarise(table).set_index("metric").loc["cindex", "n_folds"] == 0


def test_missing_test_prediction_is_an_error(tmp_path: Path) -> None:
    frame = make_predictions("m", 0)
    frame.loc[frame["split"] == "test", "risk"] = np.nan
    with pytest.raises(HistofuseError, match="risk"):
        evaluate_predictions(write_predictions(tmp_path, [frame]))


def test_duplicate_model_fold_is_an_error(tmp_path: Path) -> None:
    paths = write_predictions(tmp_path / "a", [make_predictions("m", 0)])
    paths += write_predictions(tmp_path / "b", [make_predictions("m", 0)])
    with pytest.raises(HistofuseError, match="also appears"):
        evaluate_predictions(paths)


def test_missing_required_column_is_an_error(tmp_path: Path) -> None:
    frame = make_predictions("m", 0).drop(columns=["split"])
    path = tmp_path / "fold0.parquet"
    frame.to_parquet(path)
    with pytest.raises(HistofuseError, match="split"):
        evaluate_predictions([path])

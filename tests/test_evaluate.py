from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines.utils import concordance_index
from scipy import stats
from sklearn.metrics import accuracy_score, roc_auc_score
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_ipcw, cumulative_dynamic_auc, integrated_brier_score
from sksurv.util import Surv

from histofuse.errors import HistofuseError
from histofuse.evaluate import (
    CLASSIFICATION_METRICS,
    COMPARISON_COLUMNS,
    CONFUSION_COLUMNS,
    FOLD_COLUMNS,
    SUMMARY_COLUMNS,
    SURVIVAL_METRICS,
    EvaluationSettings,
    compare_models,
    evaluate_predictions,
    fold_scorers,
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
    # 3 folds x (4 grade metrics) for both models + 3 folds x 5 survival metrics for one.
    assert len(table) == 3 * 4 * 2 + 3 * 5
    assert set(table.loc[table["model"] == "mean_pool", "task"]) == {"grade"}
    assert set(table["metric"]) == set(CLASSIFICATION_METRICS) | set(SURVIVAL_METRICS)

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
    # Other rows enter only the IPCW survival metrics (censoring distribution, Cox calibration).
    test_only = ~clean["metric"].isin(["uno_cindex", "td_auc", "ibs", "ibs_km"])
    pd.testing.assert_frame_equal(clean[test_only], noisy[test_only])
    assert not np.allclose(clean.loc[~test_only, "value"], noisy.loc[~test_only, "value"], equal_nan=True)

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
    assert len(summary) == 2 * 4 + 5
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
    out_comparison = tmp_path / "metrics" / "comparison.tsv"
    out_confusion = tmp_path / "metrics" / "confusion.tsv"
    settings = EvaluationSettings(n_boot=10, seed=3)
    run_evaluate(
        prediction_files=files,
        out_folds=out_folds,
        out_summary=out_summary,
        out_comparison=out_comparison,
        out_confusion=out_confusion,
        settings=settings,
    )
    folds = pd.read_csv(out_folds, sep="\t")
    summary = pd.read_csv(out_summary, sep="\t")
    assert list(folds.columns) == list(FOLD_COLUMNS)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    expected = summarise(evaluate_predictions(files))
    np.testing.assert_allclose(summary["mean"], expected["mean"], rtol=1e-12)
    np.testing.assert_allclose(summary["sd"], expected["sd"], rtol=1e-12)
    assert not list(out_folds.parent.glob(".*.tmp"))

    # Bootstrap intervals: present, ordered, around the mean for well-defined metrics, seeded.
    defined = summary[summary["n_boot"] > 0]
    assert set(defined["metric"]) >= {"cindex", "auc", "accuracy"}
    assert (defined["n_boot"] <= 10).all()
    assert (defined["ci_low"] <= defined["ci_high"]).all()
    grade = defined[defined["metric"].isin(["auc", "accuracy"])]
    assert ((grade["ci_low"] <= grade["mean"] + 1e-9) & (grade["mean"] <= grade["ci_high"] + 1e-9)).all()
    again = tmp_path / "again.tsv"
    one_model = [path for path in files if "attn_mil" in str(path)]
    run_evaluate(prediction_files=one_model, out_folds=tmp_path / "f.tsv", out_summary=again, settings=settings)
    alone = pd.read_csv(again, sep="\t")
    pd.testing.assert_frame_equal(alone, summary[summary["model"] == "attn_mil"].reset_index(drop=True))
    other = tmp_path / "other.tsv"
    run_evaluate(
        prediction_files=files,
        out_folds=tmp_path / "f.tsv",
        out_summary=other,
        settings=EvaluationSettings(n_boot=10, seed=4),
    )
    assert not np.allclose(pd.read_csv(other, sep="\t")["ci_low"], summary["ci_low"], equal_nan=True)

    comparison = pd.read_csv(out_comparison, sep="\t")
    assert list(comparison.columns) == list(COMPARISON_COLUMNS)
    assert set(comparison["metric"]) == set(CLASSIFICATION_METRICS)  # survival has one model
    confusion = pd.read_csv(out_confusion, sep="\t")
    assert list(confusion.columns) == list(CONFUSION_COLUMNS)
    n_scored = folds[folds["metric"] == "accuracy"].set_index(["model", "fold"])["n"]
    counts = confusion.groupby(["model", "fold"])["count"].sum()
    pd.testing.assert_series_equal(counts.sort_index(), n_scored.sort_index(), check_names=False)
    correct = confusion[confusion["true"] == confusion["predicted"]].groupby(["model", "fold"])["count"].sum()
    accuracy = folds[folds["metric"] == "accuracy"].set_index(["model", "fold"])["value"]
    np.testing.assert_allclose((correct / counts).sort_index(), accuracy.sort_index())


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


def test_survival_metrics_match_scikit_survival(tmp_path: Path) -> None:
    frame = make_predictions("m", 0, seed=5)
    (scorer,) = [s for s in fold_scorers(write_predictions(tmp_path, [frame])) if s.task == "survival"]
    train = frame[frame["split"] == "train"]
    labelled = frame[frame["event"].notna()]  # the censoring distribution: every labelled patient
    test = frame[(frame["split"] == "test") & frame["event"].notna()]
    y_train = Surv.from_arrays(labelled["event"].astype(bool), labelled["survival_time"])
    y_test = Surv.from_arrays(test["event"].astype(bool), test["survival_time"])
    times = scorer.times
    assert len(times) >= 2
    assert times.min() >= test["survival_time"].min() and times.max() < test["survival_time"].max()
    scores = scorer.scores()
    risk = test["risk"].to_numpy()
    assert scores["uno_cindex"] == pytest.approx(
        concordance_index_ipcw(y_train, y_test, risk, tau=times[-1])[0]
    )
    assert scores["td_auc"] == pytest.approx(cumulative_dynamic_auc(y_train, y_test, risk, times)[1])
    # The survival curves come from a Cox model on the risk score: higher risk, lower survival.
    order = np.argsort(risk)
    assert np.all(np.diff(scorer.survival[order], axis=0) <= 1e-12)
    assert np.all(np.diff(scorer.survival, axis=1) <= 1e-12)
    assert scores["ibs"] == pytest.approx(
        integrated_brier_score(y_train, y_test, scorer.survival, times)
    )
    cox = CoxPHSurvivalAnalysis(alpha=1e-4).fit(
        train[["risk"]].to_numpy(), Surv.from_arrays(train["event"].astype(bool), train["survival_time"])
    )
    expected = np.vstack([fn(times) for fn in cox.predict_survival_function(test[["risk"]].to_numpy())])
    np.testing.assert_allclose(scorer.survival, expected)
    # An informative risk beats the no-information Kaplan–Meier reference.
    assert scores["ibs"] < scores["ibs_km"]


def test_compare_models_matches_scipy() -> None:
    a = [0.70, 0.72, 0.65, 0.80, 0.75]
    b = [0.60, 0.70, 0.66, 0.71, 0.69]
    table = pd.DataFrame(
        {
            "model": ["a"] * 5 + ["b"] * 5 + ["c"] * 2,
            "task": "survival",
            "metric": "cindex",
            "fold": [*range(5), *range(5), 0, 1],
            "value": [*a, *b, 0.5, float("nan")],
            "n": 10,
        }
    )
    comparison = compare_models(table).set_index(["model_a", "model_b"])
    row = comparison.loc[("a", "b")]
    assert row["n_folds"] == 5
    assert row["mean_diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert row["p_ttest"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert row["p_wilcoxon"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    one_fold = comparison.loc[("a", "c")]
    assert one_fold["n_folds"] == 1 and math.isnan(one_fold["p_ttest"])

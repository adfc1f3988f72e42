from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from lifelines.utils import concordance_index
from sklearn.metrics import roc_auc_score

from histofuse.errors import ConfigError, HistofuseError
from histofuse.training import TrainSettings, load_fold_data, load_trained_model, predict_fold, train_fold

N_PER_GRADE = 16
TILE_DIM = 16
N_GENOMIC = 10
EMPTY_PATIENTS = ("P000", "P017")  # no slide at all / a slide with zero tiles
NO_LABEL_PATIENT = "P030"

FAST = TrainSettings(
    epochs=15,
    lr=2e-3,
    patience=6,
    hidden_dim=32,
    dropout=0.1,
    max_tiles=32,
    grad_accum=4,
    seed=0,
    device="cpu",
)


def _write_h5(path: Path, features: np.ndarray) -> None:
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=features.astype(np.float32))
        handle.create_dataset("coords", data=np.zeros((features.shape[0], 2), dtype=np.int64))
        handle.attrs["encoder"] = "toy"


def _make_cohort(root: Path) -> dict[str, Path]:
    """48 patients, 3 grades; tiles, genomics and survival all carry the grade signal."""
    rng = np.random.default_rng(123)
    features_dir, tables_dir = root / "features", root / "tables"
    features_dir.mkdir(parents=True)
    tables_dir.mkdir(parents=True)
    grades = np.repeat(np.arange(3), N_PER_GRADE)
    patient_ids = [f"P{i:03d}" for i in range(grades.size)]

    slides = []
    for patient, grade in zip(patient_ids, grades, strict=True):
        if patient == EMPTY_PATIENTS[0]:
            continue
        for s in range(1 + int(rng.integers(0, 2))):
            slide_id = f"{patient}-S{s}"
            slides.append({"slide_id": slide_id, "patient_id": patient})
            n_tiles = 0 if patient == EMPTY_PATIENTS[1] else int(rng.integers(20, 60))
            tiles = rng.normal(size=(n_tiles, TILE_DIM))
            tiles[:, :4] += 1.2 * grade
            _write_h5(features_dir / f"{slide_id}.h5", tiles)
    pd.DataFrame(slides).to_parquet(tables_dir / "slides.parquet", index=False)

    genomics = rng.normal(size=(grades.size, N_GENOMIC))
    genomics[:, :5] += 1.5 * grades[:, None]
    genomics[:, 9] = 3.0  # constant column
    genomics[rng.random(genomics.shape) < 0.05] = np.nan
    genomic_table = pd.DataFrame(genomics, columns=[f"gene_{j}" for j in range(N_GENOMIC)])
    genomic_table.insert(0, "patient_id", patient_ids)
    genomic_table.to_parquet(tables_dir / "genomics.parquet", index=False)

    time = np.exp(3.0 - 0.9 * grades + rng.normal(scale=0.25, size=grades.size))
    event = (rng.random(grades.size) < 0.75).astype(int)
    time = np.where(event == 1, time, time * rng.uniform(0.5, 1.0, size=grades.size))
    patients = pd.DataFrame(
        {
            "patient_id": patient_ids,
            "grade": pd.array(grades, dtype="Int64"),
            "survival_time": time,
            "event": pd.array(event, dtype="Int64"),
        }
    )
    patients.loc[patients["patient_id"] == "P005", "grade"] = pd.NA
    patients.loc[patients["patient_id"] == "P020", ["survival_time"]] = np.nan
    patients.loc[patients["patient_id"] == NO_LABEL_PATIENT, ["grade", "event"]] = pd.NA
    patients.loc[patients["patient_id"] == NO_LABEL_PATIENT, "survival_time"] = np.nan
    patients.to_parquet(tables_dir / "patients.parquet", index=False)
    (tables_dir / "labels.json").write_text(json.dumps({"grade": {"classes": ["2", "3", "4"]}}))

    rows = []
    for grade in range(3):
        members = [p for p, g in zip(patient_ids, grades, strict=True) if g == grade]
        for fold in range(2):
            order = members if fold == 0 else members[::-1]
            for position, patient in enumerate(order):
                split = "train" if position < 10 else "val" if position < 12 else "test"
                rows.append({"patient_id": patient, "fold": fold, "split": split})
    folds_tsv = root / "folds.tsv"
    pd.DataFrame(rows).to_csv(folds_tsv, sep="\t", index=False)
    return {"features_dir": features_dir, "tables_dir": tables_dir, "folds_tsv": folds_tsv}


def _train(
    cohort: dict[str, Path], out: Path, settings: TrainSettings = FAST, fold: int = 0
) -> dict[str, Path]:
    paths = {
        "out_checkpoint": out / "model.pt",
        "out_predictions": out / "predictions.parquet",
        "out_history": out / "history.tsv",
    }
    train_fold(model_name="mm_baseline", fold=fold, settings=settings, **cohort, **paths)
    return paths


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _make_cohort(tmp_path_factory.mktemp("cohort"))


@pytest.fixture(scope="module")
def trained(cohort: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _train(cohort, tmp_path_factory.mktemp("run1"))


def test_predictions_cover_every_patient_of_the_fold(
    cohort: dict[str, Path], trained: dict[str, Path]
) -> None:
    predictions = pd.read_parquet(trained["out_predictions"])
    folds = pd.read_csv(cohort["folds_tsv"], sep="\t", dtype={"patient_id": str})
    fold0 = folds[folds["fold"] == 0].set_index("patient_id")["split"]
    assert sorted(predictions["patient_id"]) == sorted(fold0.index)
    assert (predictions.set_index("patient_id")["split"] == fold0.loc[predictions["patient_id"]]).all()
    expected = ["patient_id", "fold", "split", "model", "grade", "grade_pred"]
    expected += [f"grade_prob_{k}" for k in range(3)] + ["survival_time", "event", "risk"]
    assert list(predictions.columns) == expected
    assert str(predictions["grade"].dtype) == "Int64" and str(predictions["event"].dtype) == "Int64"
    assert (predictions["fold"] == 0).all() and (predictions["model"] == "mm_baseline").all()
    probabilities = predictions[[f"grade_prob_{k}" for k in range(3)]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert np.isfinite(predictions["risk"]).all()
    unlabelled = predictions.set_index("patient_id").loc[[*EMPTY_PATIENTS, NO_LABEL_PATIENT]]
    assert unlabelled[["grade_prob_0", "risk"]].notna().all().all()

    history = pd.read_csv(trained["out_history"], sep="\t")
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "val_score"]
    assert 1 <= len(history) <= FAST.epochs and np.isfinite(history["train_loss"]).all()


def test_planted_signal_is_learned(trained: dict[str, Path]) -> None:
    predictions = pd.read_parquet(trained["out_predictions"])
    test = predictions[predictions["split"] == "test"]
    graded = test[test["grade"].notna()]
    probabilities = graded[[f"grade_prob_{k}" for k in range(3)]].to_numpy()
    auc = roc_auc_score(graded["grade"].astype(int), probabilities, multi_class="ovr")
    assert auc > 0.7
    timed = test[test["survival_time"].notna() & test["event"].notna()]
    c_index = concordance_index(timed["survival_time"], -timed["risk"], timed["event"].astype(int))
    assert c_index > 0.6


def test_two_runs_give_identical_predictions(
    cohort: dict[str, Path], trained: dict[str, Path], tmp_path: Path
) -> None:
    again = _train(cohort, tmp_path)
    pd.testing.assert_frame_equal(
        pd.read_parquet(trained["out_predictions"]), pd.read_parquet(again["out_predictions"])
    )
    pd.testing.assert_frame_equal(
        pd.read_csv(trained["out_history"], sep="\t"), pd.read_csv(again["out_history"], sep="\t")
    )


def test_checkpoint_restores_the_model(cohort: dict[str, Path], trained: dict[str, Path]) -> None:
    content = torch.load(trained["out_checkpoint"], map_location="cpu", weights_only=True)
    assert content["model_name"] == "mm_baseline" and content["fold"] == 0
    assert content["n_tiles_dim"] == TILE_DIM
    # every genomic feature but the constant gene_9, z-scored, plus a missing-indicator for those
    # with gaps in the train part
    outputs = content["genomics"]["output_columns"]
    assert content["n_genomic"] == len(outputs)
    assert [c for c in outputs if not c.endswith("__missing")] == [f"gene_{i}" for i in range(N_GENOMIC - 1)]
    assert any(c.endswith("__missing") for c in outputs)
    assert content["grade_classes"] == ["2", "3", "4"]
    assert len(content["bin_edges"]) == FAST.n_bins + 1 and content["encoder"] == "toy"
    assert content["settings"]["lr"] == FAST.lr
    assert 1 <= content["best_epoch"] <= content["epochs_run"]

    model, _ = load_trained_model(trained["out_checkpoint"])
    data = load_fold_data(fold=0, **cohort)
    again = predict_fold(model, data, model_name="mm_baseline", device=torch.device("cpu"))
    pd.testing.assert_frame_equal(
        again, pd.read_parquet(trained["out_predictions"]), check_exact=False, rtol=1e-6
    )


def test_preprocessing_uses_train_patients_only(
    cohort: dict[str, Path], trained: dict[str, Path], tmp_path: Path
) -> None:
    folds = pd.read_csv(cohort["folds_tsv"], sep="\t", dtype={"patient_id": str})
    held_out = folds.loc[(folds["fold"] == 0) & (folds["split"] != "train"), "patient_id"].tolist()
    tables_dir = tmp_path / "tables"
    shutil.copytree(cohort["tables_dir"], tables_dir)
    genomics = pd.read_parquet(tables_dir / "genomics.parquet")
    genomics.loc[genomics["patient_id"].isin(held_out), ["gene_0", "gene_9"]] = 1e9
    genomics.to_parquet(tables_dir / "genomics.parquet", index=False)
    patients = pd.read_parquet(tables_dir / "patients.parquet")
    patients.loc[patients["patient_id"].isin(held_out), "survival_time"] = 1e4
    patients.loc[patients["patient_id"].isin(held_out), "event"] = 1
    patients.to_parquet(tables_dir / "patients.parquet", index=False)

    outputs = _train({**cohort, "tables_dir": tables_dir}, tmp_path, dataclasses.replace(FAST, epochs=1))
    reference = torch.load(trained["out_checkpoint"], weights_only=True)
    changed = torch.load(outputs["out_checkpoint"], weights_only=True)
    assert changed["genomics"] == reference["genomics"]
    assert changed["bin_edges"] == reference["bin_edges"]
    predictions = pd.read_parquet(outputs["out_predictions"])
    assert np.isfinite(predictions["risk"]).all()


def test_wsi_only_single_task(cohort: dict[str, Path], tmp_path: Path) -> None:
    tables_dir = tmp_path / "tables"
    shutil.copytree(cohort["tables_dir"], tables_dir)
    (tables_dir / "genomics.parquet").unlink()
    settings = dataclasses.replace(FAST, epochs=2, tasks=("grade",))
    outputs = _train({**cohort, "tables_dir": tables_dir}, tmp_path, settings, fold=1)
    predictions = pd.read_parquet(outputs["out_predictions"])
    assert "risk" not in predictions.columns
    assert {"grade", "grade_pred", "survival_time", "event"} <= set(predictions.columns)
    assert (predictions["fold"] == 1).all()
    assert torch.load(outputs["out_checkpoint"], weights_only=True)["n_genomic"] == 0


def test_unknown_fold_is_reported(cohort: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(HistofuseError, match="fold 7"):
        _train(cohort, tmp_path, fold=7)


def test_settings_from_mapping() -> None:
    settings = TrainSettings.from_mapping(
        {"tasks": ["survival"], "epochs": 3, "lr": 1e-3, "task_weights": {"survival": 2}}
    )
    assert settings.tasks == ("survival",) and settings.epochs == 3
    assert settings.task_weight("survival") == 2.0 and settings.task_weights == (("survival", 2.0),)
    assert settings.to_dict()["task_weights"] == {"survival": 2.0}
    assert TrainSettings.from_mapping(None) == TrainSettings()
    assert TrainSettings().task_weight("grade") == 1.0


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"epoch": 3}, "training.epoch"),
        ({"tasks": ["stage"]}, "training.tasks"),
        ({"epochs": 0}, "training.epochs"),
        ({"lr": -1.0}, "training.lr"),
        ({"dropout": 1.0}, "training.dropout"),
        ({"grad_accum": True}, "training.grad_accum"),
        ({"device": "gpu7"}, "training.device"),
        ({"tasks": ["grade"], "task_weights": {"survival": 1.0}}, "training.task_weights"),
    ],
)
def test_settings_errors_name_the_key(mapping: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainSettings.from_mapping(mapping)


@pytest.mark.parametrize("model_name", ["abmil", "snn", "clinical", "concat", "kronecker"])
def test_baselines_train_through_the_same_engine(model_name: str, cohort: dict[str, Path], tmp_path: Path) -> None:
    tables_dir = tmp_path / "tables"
    shutil.copytree(cohort["tables_dir"], tables_dir)
    patients = pd.read_parquet(tables_dir / "patients.parquet")
    rng = np.random.default_rng(3)
    grade = patients["grade"].fillna(1).to_numpy(dtype=float)
    pd.DataFrame(
        {
            "patient_id": patients["patient_id"],
            "age": 50 + 8 * grade + rng.normal(0, 3, len(patients)),
            "sex": rng.choice(["F", "M"], len(patients)),
        }
    ).to_parquet(tables_dir / "clinical.parquet", index=False)
    paths = {"out_checkpoint": tmp_path / "m.pt", "out_predictions": tmp_path / "p.parquet", "out_history": None}
    use_wsi = model_name not in ("snn", "clinical")
    train_fold(
        model_name=model_name,
        fold=0,
        settings=dataclasses.replace(FAST, epochs=3),
        **{**cohort, "tables_dir": tables_dir},
        **paths,
        use_wsi=use_wsi,
    )
    predictions = pd.read_parquet(paths["out_predictions"])
    assert (predictions["model"] == model_name).all() and np.isfinite(predictions["risk"]).all()
    probs = predictions[[f"grade_prob_{k}" for k in range(3)]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    content = torch.load(paths["out_checkpoint"], weights_only=True)
    model, _ = load_trained_model(paths["out_checkpoint"])
    assert content["n_clinical"] == 3 and sum(p.numel() for p in model.parameters()) > 0


# -------------------------------------------------------------------------------- per-model settings


def _section(**extra: object) -> dict[str, object]:
    return {"models": ["snn", "abmil"], "tasks": ["grade", "survival"], "lr": 2e-4, "epochs": 20, "cox": {}, **extra}


def test_overrides_apply_to_their_model_only() -> None:
    from histofuse.training.settings import model_training_section

    section = _section(overrides={"snn": {"lr": 1e-3, "epochs": 60}})
    snn = model_training_section(section, "snn")
    abmil = model_training_section(section, "abmil")
    assert (snn["lr"], snn["epochs"]) == (1e-3, 60)
    assert (abmil["lr"], abmil["epochs"]) == (2e-4, 20)
    for merged in (snn, abmil):
        assert not {"models", "cox", "overrides"} & set(merged)
        assert merged["tasks"] == ["grade", "survival"]
        TrainSettings.from_mapping(merged)
    assert model_training_section(_section(), "snn") == abmil  # no overrides: the section itself


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ksf": {"lr": 1e-3}}, "names ksf, which training.models"),
        ({"snn": {"tasks": ["grade"]}}, "sets tasks, which cannot differ between models"),
        ({"snn": {"lr": -1}}, "training.overrides.snn"),
        ({"snn": {"learning_rate": 1e-3}}, "training.overrides.snn"),
        ({"snn": 0.001}, "overrides.snn' must be a mapping"),
    ],
)
def test_bad_overrides_are_config_errors(overrides: dict[str, object], message: str) -> None:
    from histofuse.training.settings import model_training_section

    with pytest.raises(ConfigError, match=message) as err:
        model_training_section(_section(overrides=overrides), "snn")
    assert "Fix:" in str(err.value)


def test_ksf_trains_with_the_authors_preset_beneath_its_overrides(caplog: pytest.LogCaptureFixture) -> None:
    from histofuse.training.settings import MODEL_PRESETS, model_training_section

    section = _section(models=["snn", "ksf"], overrides={"ksf": {"lr": 5e-4}})
    with caplog.at_level(logging.INFO, logger="histofuse.training.settings"):
        ksf = model_training_section(section, "ksf")
    settings = TrainSettings.from_mapping(ksf)
    assert (settings.optimizer, settings.weight_decay, settings.lr_schedule) == ("adam", 0.1, "cosine")
    assert (settings.batch_size, settings.grad_accum, settings.class_weights, settings.alpha_surv) == (8, 8, "balanced", 0.0)
    assert settings.lr == 5e-4  # the user's override wins over the preset
    assert "ksf trains with its preset" in caplog.text and "optimizer 'adam' instead of 'adamw'" in caplog.text
    assert " lr 0.001" not in caplog.text  # an overridden key is not the preset's
    # the other models keep the section's settings
    snn = TrainSettings.from_mapping(model_training_section(section, "snn"))
    assert (snn.optimizer, snn.batch_size) == ("adamw", 1)
    assert set(MODEL_PRESETS) == {"ksf"}


def test_a_preset_replacing_a_chosen_value_warns(caplog: pytest.LogCaptureFixture) -> None:
    from histofuse.training.settings import model_training_section

    with caplog.at_level(logging.INFO, logger="histofuse.training.settings"):
        model_training_section(_section(models=["ksf"]), "ksf")
    assert all(record.levelno == logging.INFO for record in caplog.records)  # only defaults replaced
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="histofuse.training.settings"):
        model_training_section(_section(models=["ksf"], weight_decay=0.01), "ksf")
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings and "weight_decay 0.1 instead of 0.01" in warnings[0].getMessage()


@pytest.mark.parametrize("overrides", [{"ksf": {"batch_size": 1}}, {"ksf": {"batch_size": 1, "grad_accum": 1}}])
def test_ksf_with_a_batch_of_one_is_refused(overrides: dict[str, object]) -> None:
    from histofuse.training.settings import model_training_section

    with pytest.raises(ConfigError, match="ksf needs batch_size >= 2, got 1") as err:
        model_training_section(_section(models=["ksf"], overrides=overrides), "ksf")
    assert "overrides.ksf.batch_size" in str(err.value) and "preset is 8" in str(err.value)


def test_a_model_listed_twice_is_a_config_error() -> None:
    from histofuse.training.settings import check_model_list

    check_model_list(["mm_baseline", "abmil", "snn"])
    check_model_list(["concat", "kronecker"])
    with pytest.raises(ConfigError, match="both mm_baseline and concat"):
        check_model_list(["mm_baseline", "concat"])
    with pytest.raises(ConfigError, match="abmil more than once"):
        check_model_list(["abmil", "snn", "abmil"])


def test_epoch_log_line_names_each_value_once() -> None:
    from histofuse.training.trainer import epoch_line

    assert epoch_line("snn fold 0", 3, 1.5, 1.4718, "loss", -1.4718) == "snn fold 0 epoch 3: train loss 1.5000, val loss 1.4718"
    assert epoch_line("snn fold 0", 3, 1.5, 1.4718, "cindex", 0.71) == (
        "snn fold 0 epoch 3: train loss 1.5000, val loss 1.4718, val cindex 0.7100"
    )

"""The penalised Cox baseline: fitted on the training part only, risks for every patient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from histofuse.errors import ConfigError
from histofuse.training.cox import CoxSettings, train_cox_fold


def _tables(root: Path, n: int = 120, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    ids = [f"P{i:03d}" for i in range(n)]
    grade = rng.integers(0, 3, n)
    age = rng.normal(60, 10, n)
    hazard = np.exp(0.9 * grade + 0.03 * (age - 60))
    time = rng.exponential(30 / hazard)
    event = (rng.random(n) < 0.8).astype(int)
    tables = root / "tables"
    tables.mkdir()
    pd.DataFrame(
        {
            "patient_id": ids,
            "grade": pd.array(grade, dtype="Int64"),
            "survival_time": time,
            "event": pd.array(event, dtype="Int64"),
        }
    ).to_parquet(tables / "patients.parquet", index=False)
    pd.DataFrame({"patient_id": ids, "age": age, "sex": rng.choice(["F", "M"], n)}).to_parquet(
        tables / "clinical.parquet", index=False
    )
    splits = ["train"] * 80 + ["val"] * 15 + ["test"] * 25
    folds = root / "folds.tsv"
    pd.DataFrame({"patient_id": ids, "fold": 0, "split": splits}).to_csv(folds, sep="\t", index=False)
    return tables, folds


def _fit(root: Path, tables: Path, folds: Path, covariates: tuple[str, ...]) -> tuple[dict, pd.DataFrame]:
    out = root / "out"
    out.mkdir(exist_ok=True)
    train_cox_fold(
        model_name="cox_clinical",
        fold=0,
        tables_dir=tables,
        folds_tsv=folds,
        settings=CoxSettings(covariates=covariates, penalizer=0.01),
        out_checkpoint=out / "cox.pt",
        out_predictions=out / "pred.parquet",
        out_history=out / "history.tsv",
    )
    return torch.load(out / "cox.pt", weights_only=True), pd.read_parquet(out / "pred.parquet")


def test_cox_learns_the_planted_hazard_and_predicts_every_patient(tmp_path: Path) -> None:
    tables, folds = _tables(tmp_path)
    checkpoint, predictions = _fit(tmp_path, tables, folds, ("grade", "age"))
    coefficients = checkpoint["coefficients"]
    # grade is categorical (one-hot): grade 2 has a higher log-hazard than grade 0; age is positive
    assert coefficients["grade=2"] > coefficients["grade=0"] and coefficients["age"] > 0
    assert len(predictions) == 120 and np.isfinite(predictions["risk"]).all()
    assert list(predictions.columns[:4]) == ["patient_id", "fold", "split", "model"]
    from lifelines.utils import concordance_index

    test = predictions[predictions["split"] == "test"]
    assert concordance_index(test["survival_time"], -test["risk"], test["event"]) > 0.6


def test_cox_never_sees_held_out_patients(tmp_path: Path) -> None:
    tables, folds = _tables(tmp_path)
    reference, _ = _fit(tmp_path, tables, folds, ("grade", "age", "sex"))
    held_out = pd.read_csv(folds, sep="\t")["split"].ne("train").to_numpy()
    patients = pd.read_parquet(tables / "patients.parquet")
    patients.loc[held_out, "survival_time"] = 1e5
    patients.to_parquet(tables / "patients.parquet", index=False)
    clinical = pd.read_parquet(tables / "clinical.parquet")
    clinical.loc[held_out, "age"] = 500.0
    clinical.to_parquet(tables / "clinical.parquet", index=False)
    changed, _ = _fit(tmp_path, tables, folds, ("grade", "age", "sex"))
    assert changed["coefficients"] == reference["coefficients"]
    assert changed["transform"] == reference["transform"]


def test_unknown_covariate_names_the_columns(tmp_path: Path) -> None:
    tables, folds = _tables(tmp_path)
    with pytest.raises(ConfigError, match="'stage' is neither"):
        _fit(tmp_path, tables, folds, ("stage",))
    with pytest.raises(ConfigError, match="unknown key"):
        CoxSettings.from_mapping({"penalty": 1})


# --- cox_genomic: penalised Cox on the fold's preprocessed features ----------------------------------


def _genomic_tables(root: Path, n: int = 120, seed: int = 1) -> tuple[Path, Path, Path]:
    from histofuse.preprocess import PreprocessSettings, fit_fold_preprocessing

    rng = np.random.default_rng(seed)
    tables, folds = _tables(root, n=n, seed=seed)
    ids = pd.read_parquet(tables / "patients.parquet")["patient_id"]
    genes = rng.normal(size=(n, 30))
    patients = pd.read_parquet(tables / "patients.parquet")
    hazard = np.exp(1.0 * genes[:, 0] - 0.8 * genes[:, 1])
    patients["survival_time"] = rng.exponential(30 / hazard)
    patients.to_parquet(tables / "patients.parquet", index=False)
    genomics = pd.DataFrame(genes * 3 + 5, columns=[f"G{j}_cnv" for j in range(30)]).assign(patient_id=ids)
    genomics.to_parquet(tables / "genomics.parquet", index=False)
    splits = ["train"] * (n - 40) + ["val"] * 10 + ["test"] * 30
    pd.DataFrame({"patient_id": ids, "fold": 0, "split": splits}).to_csv(folds, sep="\t", index=False)
    fitted = fit_fold_preprocessing(
        fold=0,
        fold_rows=pd.read_csv(folds, sep="\t"),
        genomics=genomics,
        clinical=pd.read_parquet(tables / "clinical.parquet"),
        gene_groups=None,
        settings=PreprocessSettings(),
    )
    preprocessing = root / "fold0.json"
    preprocessing.write_text(fitted.to_json())
    return tables, folds, preprocessing


@pytest.mark.parametrize("inputs", [("genomics",), ("genomics", "clinical")])
def test_cox_genomic_learns_planted_genes_from_the_fold_preprocessing(tmp_path: Path, inputs: tuple[str, ...]) -> None:
    from lifelines.utils import concordance_index

    from histofuse.training.cox import CoxFeatureSettings

    tables, folds, preprocessing = _genomic_tables(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    train_cox_fold(
        model_name="cox_genomic",
        fold=0,
        tables_dir=tables,
        folds_tsv=folds,
        settings=CoxFeatureSettings(inputs=inputs, penalizer=0.05),
        out_checkpoint=out / "cox.pt",
        out_predictions=out / "pred.parquet",
        preprocessing=preprocessing,
    )
    checkpoint = torch.load(out / "cox.pt", weights_only=True)
    coefficients = checkpoint["coefficients"]
    assert coefficients["genomics:G0_cnv"] > 0.3 and coefficients["genomics:G1_cnv"] < -0.3
    assert any(name.startswith("clinical:") for name in coefficients) == ("clinical" in inputs)
    predictions = pd.read_parquet(out / "pred.parquet")
    test = predictions[predictions["split"] == "test"]
    assert concordance_index(test["survival_time"], -test["risk"], test["event"]) > 0.6  # 30 test patients


def test_cox_inputs_are_checked_against_the_modalities() -> None:
    from histofuse.training.cox import check_cox_inputs

    with pytest.raises(ConfigError, match=r"add clinical to modalities \(modalities: \['genomics', 'clinical'\]\)"):
        check_cox_inputs(["cox_clinical"], modalities=["genomics"], cox={"covariates": ["grade", "age"]}, cox_genomic=None)
    check_cox_inputs(["cox_clinical"], modalities=["genomics"], cox={"covariates": ["grade", "subtype"]}, cox_genomic=None)
    with pytest.raises(ConfigError, match=r"\['agee'\] are not columns of the clinical table"):
        check_cox_inputs(
            ["cox_clinical"], modalities=["clinical"], cox={"covariates": ["agee"]}, cox_genomic=None, clinical_columns=["age"]
        )
    with pytest.raises(ConfigError, match="add genomics to modalities"):
        check_cox_inputs(["cox_genomic"], modalities=["clinical", "wsi"], cox=None, cox_genomic={})

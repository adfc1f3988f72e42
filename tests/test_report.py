from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import histofuse
from histofuse.evaluate import run_evaluate
from histofuse.report import build_report, html as report_html, plots

CLASSES = ["2", "3", "4"]
N_PATIENTS = 30
N_FOLDS = 3


def fold_assignment() -> pd.DataFrame:
    rows = []
    for fold in range(N_FOLDS):
        for index in range(N_PATIENTS):
            position = (index + 10 * fold) % N_PATIENTS
            split = "test" if position < 10 else "val" if position < 14 else "train"
            rows.append({"patient_id": f"P{index:03d}", "fold": fold, "split": split})
    return pd.DataFrame(rows)


def patient_table(rng: np.random.Generator) -> pd.DataFrame:
    grade = pd.array(rng.integers(0, len(CLASSES), size=N_PATIENTS), dtype="Int64")
    grade[3] = pd.NA
    return pd.DataFrame(
        {
            "patient_id": [f"P{index:03d}" for index in range(N_PATIENTS)],
            "grade": grade,
            "survival_time": rng.exponential(40.0, size=N_PATIENTS),
            "event": pd.array((rng.random(N_PATIENTS) < 0.6).astype(int), dtype="Int64"),
        }
    )


def prediction_frames(
    patients: pd.DataFrame,
    folds: pd.DataFrame,
    rng: np.random.Generator,
    model: str,
    *,
    survival: bool,
) -> list[pd.DataFrame]:
    frames = []
    for fold, assignment in folds.groupby("fold"):
        frame = assignment.merge(patients, on="patient_id")
        n = len(frame)
        grade = frame["grade"].fillna(0).to_numpy(dtype=int)
        logits = rng.normal(size=(n, len(CLASSES))) + 2.0 * np.eye(len(CLASSES))[grade]
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        frame["model"] = model
        frame["grade_pred"] = probs.argmax(axis=1)
        for k in range(len(CLASSES)):
            frame[f"grade_prob_{k}"] = probs[:, k]
        if survival:
            frame["risk"] = -np.log(frame["survival_time"]) + rng.normal(0, 0.5, size=n)
        else:
            frame = frame.drop(columns=["survival_time", "event"])
        frames.append(frame.assign(fold=int(fold)))
    return frames


def write_png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture()
def report_inputs(tmp_path: Path) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "labels.json").write_text(json.dumps({"grade": {"classes": CLASSES}}))
    patients = patient_table(rng)
    patients.to_parquet(tables / "patients.parquet", index=False)
    slide_ids = [f"S{index:03d}" for index in range(N_PATIENTS)]
    pd.DataFrame({"slide_id": slide_ids, "patient_id": patients["patient_id"]}).to_parquet(
        tables / "slides.parquet", index=False
    )
    folds = fold_assignment()
    folds_tsv = tmp_path / "folds.tsv"
    folds.to_csv(folds_tsv, sep="\t", index=False)

    results = tmp_path / "results"
    prediction_files = []
    for model, survival in (("attn_mil", True), ("mean_pool", False)):
        for frame in prediction_frames(patients, folds, rng, model, survival=survival):
            path = results / "predictions" / model / f"fold{frame['fold'].iloc[0]}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(path, index=False)
            prediction_files.append(path)
    run_evaluate(
        prediction_files=prediction_files,
        out_folds=results / "metrics" / "folds.tsv",
        out_summary=results / "metrics" / "summary.tsv",
    )

    qc_pngs, tile_files, feature_files = [], [], []
    for index, slide_id in enumerate(slide_ids[:5]):
        qc = results / "qc" / f"{slide_id}.png"
        write_png(qc, (200, 30 * index, 120))
        qc_pngs.append(qc)
        tiles = results / "tiles" / f"{slide_id}.h5"
        features = results / "features" / "resnet50" / f"{slide_id}.h5"
        tiles.parent.mkdir(parents=True, exist_ok=True)
        features.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(tiles, "w") as handle:
            handle.create_dataset("coords", data=np.zeros((100 + index, 2), dtype=np.int64))
            handle.attrs["target_mpp"] = 0.5
            handle.attrs["tile_px"] = 224
        with h5py.File(features, "w") as handle:
            handle.create_dataset("features", data=np.zeros((100 + index, 8), dtype=np.float16))
            handle.attrs["encoder"] = "resnet50"
            handle.attrs["dim"] = 8
            handle.attrs["precision"] = "float16"
            handle.attrs["weights_sha256"] = "ab12cd34ef56" + "0" * 52
        tile_files.append(tiles)
        feature_files.append(features)

    return {
        "summary_tsv": results / "metrics" / "summary.tsv",
        "folds_tsv_metrics": results / "metrics" / "folds.tsv",
        "prediction_files": prediction_files,
        "tables_dir": tables,
        "folds_tsv": folds_tsv,
        "qc_pngs": qc_pngs,
        "tile_files": tile_files,
        "feature_files": feature_files,
        "config": {
            "encoder": {"name": "resnet50", "weights": Path("/models/r50.pt")},
            "folds": N_FOLDS,
            "note": "<b>not bold</b>",
        },
    }


def image_sources(text: str) -> list[str]:
    tags = re.findall(r"<img\b[^>]*>", text)
    sources = []
    for tag in tags:
        match = re.search(r'src="([^"]*)"', tag)
        assert match is not None, tag
        sources.append(match.group(1))
    return sources


def decode_png(source: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert source.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(source[len(prefix) :], validate=True)))
    image.load()
    assert image.format == "PNG"
    return image


def test_report_is_self_contained_and_complete(
    tmp_path: Path, report_inputs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not a git checkout: the revision is "unknown"
    monkeypatch.delenv("GIT_DIR", raising=False)
    out = tmp_path / "report" / "report.html"
    build_report(out_html=out, title="Cohort <A> report", **report_inputs)
    assert out.exists()
    text = out.read_text(encoding="utf-8")

    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<script" not in text.lower()
    assert "<link" not in text.lower()
    sources = image_sources(text)
    assert len(sources) == 5 + 2  # QC thumbnails + KM + ROC
    for source in sources:
        decode_png(source)
    assert re.search(r'<img class="plot km" src="data:image/png;base64,', text)
    assert re.search(r'<img class="plot roc" src="data:image/png;base64,', text)

    for heading in ("Cohort", "Slides QC", "Features", "Results", "Plots", "Provenance"):
        assert f"<h2>{heading}</h2>" in text
    assert "Cohort &lt;A&gt; report" in text and "<A>" not in text
    assert "&lt;b&gt;not bold&lt;/b&gt;" in text
    assert histofuse.__version__ in text

    summary = pd.read_csv(report_inputs["summary_tsv"], sep="\t")
    for row in summary.itertuples(index=False):
        assert f"{row.mean:.3f} ± {row.sd:.3f}" in text
    folds = pd.read_csv(report_inputs["folds_tsv_metrics"], sep="\t")
    assert "<details>" in text
    for value in folds["value"]:
        assert f"{value:.3f}" in text

    # Cohort, QC and features content.
    assert "S000" in text and "100 tiles" in text and "104 tiles" in text
    assert "ab12cd34ef56" in text and "float16" in text and "510" in text  # total tiles
    assert "grade 2 (train / val / test)" in text
    assert "log-rank" in text.lower()
    assert "Git revision</dt><dd>unknown" in text
    assert "lifelines" in text and "weights: /models/r50.pt" in text


def test_report_omits_thumbnails_beyond_limit(
    tmp_path: Path, report_inputs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_html, "MAX_THUMBNAILS", 2)
    out = tmp_path / "report.html"
    build_report(out_html=out, **report_inputs)
    text = out.read_text(encoding="utf-8")
    assert text.count("<figure>") == 2
    assert "3 more slide(s) omitted" in text


def test_report_without_survival_predictions(tmp_path: Path, report_inputs: dict[str, Any]) -> None:
    inputs = dict(report_inputs)
    inputs["prediction_files"] = [
        path for path in report_inputs["prediction_files"] if "mean_pool" in str(path)
    ]
    out = tmp_path / "report.html"
    build_report(out_html=out, **inputs)
    text = out.read_text(encoding="utf-8")
    assert "No survival predictions." in text
    assert 'class="plot roc"' in text


def test_risk_groups_cut_at_train_median() -> None:
    frame = pd.DataFrame(
        {
            "patient_id": [f"p{i}" for i in range(8)],
            "model": "m",
            "fold": 0,
            "split": ["train"] * 4 + ["test"] * 4,
            "survival_time": [1.0] * 8,
            "event": [1] * 8,
            "risk": [0.0, 1.0, 2.0, 3.0, 1.4, 1.6, -5.0, 9.0],
        }
    )
    groups = plots.assign_risk_groups(frame)
    assert list(groups["patient_id"]) == ["p4", "p5", "p6", "p7"]
    assert groups["threshold"].iloc[0] == pytest.approx(1.5)
    assert list(groups["risk_group"]) == ["low", "high", "low", "high"]


def test_standalone_pngs(tmp_path: Path, report_inputs: dict[str, Any]) -> None:
    files = report_inputs["prediction_files"]
    plots.write_km_png(files, tmp_path / "km.png")
    plots.write_roc_png(
        files,
        tmp_path / "roc.png",
        labels_json=report_inputs["tables_dir"] / "labels.json",
    )
    for name in ("km.png", "roc.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG"
            assert image.size[0] > 300
    # Without survival predictions the KM file is still a valid PNG that says so.
    survival_free = [path for path in files if "mean_pool" in str(path)]
    plots.write_km_png(survival_free, tmp_path / "km_empty.png")
    with Image.open(tmp_path / "km_empty.png") as image:
        assert image.format == "PNG"


def test_package_versions_tolerate_missing_packages() -> None:
    versions = report_html.package_versions(("pandas", "surely-not-an-installed-package"))
    assert versions["pandas"] == pd.__version__
    assert versions["surely-not-an-installed-package"] == "not installed"


def test_report_plots_the_missing_rate_curve(tmp_path: Path, report_inputs: dict[str, Any]) -> None:
    table = pd.DataFrame(
        [
            {"model": model, "fold": fold, "rate": rate, "auc": auc - 0.1 * rate * (model != "abmil"), "n": 6, "n_missing": 0}
            for model, auc in (("bidistill", 0.8), ("abmil", 0.7))
            for fold in range(2)
            for rate in (0.0, 0.5, 1.0)
        ]
    )
    path = tmp_path / "missing_rate.tsv"
    table.to_csv(path, sep="\t", index=False)
    out = tmp_path / "report.html"
    build_report(out_html=out, missing_rate_tsv=path, **report_inputs)
    text = out.read_text(encoding="utf-8")
    assert "<h3>Missing clinical data</h3>" in text
    assert len(image_sources(text)) == 5 + 3
    build_report(out_html=out, **report_inputs)
    assert "Missing clinical data" not in out.read_text(encoding="utf-8")

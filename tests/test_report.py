from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import h5py
import jinja2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import browser
import histofuse
from histofuse.errors import HistofuseError
from histofuse.evaluate import EvaluationSettings, run_evaluate
from histofuse.report import attention, build_report, figures, plots
from histofuse.report import html as report_html
from histofuse.report.markup import TEMPLATES, Fragment, MetricCell, Table, picture

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
        out_comparison=results / "metrics" / "comparison.tsv",
        out_confusion=results / "metrics" / "confusion.tsv",
        settings=EvaluationSettings(n_boot=5, seed=0),
    )
    history_files = []
    for model in ("attn_mil", "mean_pool"):
        for fold in range(N_FOLDS):
            path = results / "models" / model / f"fold{fold}_history.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            epochs = np.arange(1, 6)
            pd.DataFrame(
                {"epoch": epochs, "train_loss": 2.0 / epochs, "val_loss": 2.2 / epochs + 0.1 * fold}
            ).to_csv(path, sep="\t", index=False)
            history_files.append(path)

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
        "comparison_tsv": results / "metrics" / "comparison.tsv",
        "confusion_tsv": results / "metrics" / "confusion.tsv",
        "history_files": history_files,
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
    # QC thumbnails + fold composition, KM, ROC, confusion and training curves.
    assert len(sources) == 5 + 5
    for source in sources:
        decode_png(source)
    for css in ("km", "roc", "confusion", "training", "composition"):
        assert re.search(rf'<img class="plot {css}" src="data:image/png;base64,', text), css

    for heading in (
        "Cohort",
        "Slides QC",
        "Feature extraction",
        "Task: survival",
        "Task: grade",
        "Training",
        "Attention",
        "Missing-modality robustness",
        "Exclusions",
        "Provenance",
    ):
        assert f"<h2>{heading}</h2>" in text, heading
    # Absent optional inputs: each section says what would fill it.
    assert "appear when abmil is among training.models" in text
    assert "appears when missing_rate.models names trained models" in text
    assert "No slide was excluded" in text
    assert "Paired comparison across folds" in text  # two models on grade
    assert "appears when two or more models are trained" in text  # one survival model
    assert "Cohort &lt;A&gt; report" in text and "<A>" not in text
    assert "&lt;b&gt;not bold&lt;/b&gt;" in text
    assert histofuse.__version__ in text
    assert "Run date</dt>" in text and "weights SHA-256 ab12cd34ef56" in text

    summary = pd.read_csv(report_inputs["summary_tsv"], sep="\t")
    for row in summary.itertuples(index=False):
        assert f"{row.mean:.3f} ± {row.sd:.3f}" in text
        if np.isfinite(row.ci_low):
            assert f"[{row.ci_low:.3f}, {row.ci_high:.3f}]" in text
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


def test_optional_sections_show_their_inputs(tmp_path: Path, report_inputs: dict[str, Any]) -> None:
    rates = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    rows = [
        {"model": model, "fold": fold, "rate": rate, "auc": 0.9 - slope * rate + 0.01 * fold}
        for model, slope in (("bidistill", 0.1), ("mm_baseline", 0.4))
        for fold in range(N_FOLDS)
        for rate in rates
    ]
    missing_rate = tmp_path / "missing_rate.tsv"
    pd.DataFrame(rows).to_csv(missing_rate, sep="\t", index=False)
    exclusions = tmp_path / "exclusions.tsv"
    pd.DataFrame(
        {"slide": ["S900"], "stage": ["tile"], "reason": ["unreadable <tiff>"], "fix": ["re-scan it"]}
    ).to_csv(exclusions, sep="\t", index=False)
    attention = tmp_path / "attention" / "S000.png"
    write_png(attention, (10, 200, 10), size=(80, 60))
    out = tmp_path / "report.html"
    build_report(
        out_html=out,
        missing_rate_tsv=missing_rate,
        exclusions_tsv=exclusions,
        attention_pngs=[attention],
        **report_inputs,
    )
    text = out.read_text(encoding="utf-8")
    assert re.search(r'<img class="plot missing-rate" src="data:image/png;base64,', text)
    assert re.search(r'<img class="plot attention" src="data:image/png;base64,', text)
    # The curve's table: mean ± sd over folds per model and rate.
    for _model, slope in (("bidistill", 0.1), ("mm_baseline", 0.4)):
        for rate in rates:
            values = [0.9 - slope * rate + 0.01 * fold for fold in range(N_FOLDS)]
            assert f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" in text
    assert "S900" in text and "unreadable &lt;tiff&gt;" in text and "re-scan it" in text
    assert "No slide was excluded" not in text


def test_training_curves_read_val_metric(tmp_path: Path) -> None:
    path = tmp_path / "abmil" / "fold2_history.tsv"
    path.parent.mkdir()
    pd.DataFrame(
        {"epoch": [1, 2], "train_loss": [1.0, 0.5], "val_loss": [1.1, 0.9], "val_metric": [0.6, 0.7]}
    ).to_csv(path, sep="\t", index=False)
    histories = figures.read_histories([path])
    assert list(histories["model"]) == ["abmil", "abmil"] and set(histories["fold"]) == {2}
    fig = figures.training_curves_figure(histories)
    assert len(fig.axes) == 2  # loss and validation metric
    fig = figures.training_curves_figure(histories.drop(columns=["val_metric"]))
    assert len(fig.axes) == 1
    bad = tmp_path / "abmil" / "fold3_history.tsv"
    pd.DataFrame({"epoch": [1], "train_loss": [1.0]}).to_csv(bad, sep="\t", index=False)
    with pytest.raises(HistofuseError, match="val_loss"):
        figures.read_histories([bad])


def test_attention_uses_the_fold_that_tests_the_patient() -> None:
    slides = pd.DataFrame({"slide_id": ["S1", "S2"], "patient_id": ["P1", "P2"]})
    folds = pd.DataFrame(
        {
            "patient_id": ["P1", "P1", "P2", "P2"],
            "fold": [0, 1, 0, 1],
            "split": ["train", "test", "test", "val"],
        }
    )
    checkpoints = {0: Path("fold0.pt"), 1: Path("fold1.pt")}
    assert attention.choose_fold("S1", slides, folds, checkpoints) == 1
    assert attention.choose_fold("S2", slides, folds, checkpoints) == 0
    assert attention.choose_fold("S2", slides, folds, {1: Path("fold1.pt")}) == 1  # fallback


def test_report_loads_in_headless_chromium(
    tmp_path: Path, report_inputs: dict[str, Any]
) -> None:
    out = tmp_path / "report.html"
    build_report(out_html=out, **report_inputs)
    shot = tmp_path / "report.png"
    browser.screenshot(out, shot)
    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        # Not a blank page: the rendered report has many colours.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50
    state = browser.load_state(out, tmp_path)
    assert len(state.images) == len(image_sources(out.read_text(encoding="utf-8"))) > 0
    broken = [image for image in state.images if not image["complete"] or image["width"] == 0]
    assert not broken, broken
    assert state.errors == [], state.errors
    assert state.console == [], state.console

    # The probe does see a broken image and a console error.
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><head></head><body><img alt="x" src="data:image/png;base64,AAAA">'
        "<script>console.error('boom')</script></body></html>"
    )
    state = browser.load_state(bad, tmp_path)
    assert state.images[0]["width"] == 0
    assert any("boom" in error for error in state.errors)


def test_roc_of_a_binary_task_from_binary_prob(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    label = np.array([0, 1] * 10, dtype=float)
    frame = pd.DataFrame(
        {
            "patient_id": [f"P{i}" for i in range(20)],
            "fold": 0,
            "split": "test",
            "model": "clinical",
            "binary": label,
            "binary_prob": np.clip(0.3 + 0.4 * label + rng.normal(0, 0.2, 20), 0, 1),
        }
    )
    path = tmp_path / "predictions" / "clinical" / "fold0.parquet"
    path.parent.mkdir(parents=True)
    frame.to_parquet(path, index=False)
    predictions = report_html.read_predictions([path])
    pooled = plots.pooled_test_rows(predictions, "binary")
    assert list(pooled) == ["clinical"] and pooled["clinical"][1].shape == (20, 2)
    figure = plots.roc_figure(predictions, ["negative", "positive"], "binary")
    (ax,) = [ax for ax in figure.axes if ax.lines]
    curves = [line for line in ax.lines if line.get_label().startswith("binary positive")]
    assert len(curves) == 1 and "AUC" in curves[0].get_label()  # the positive class only


def test_templates_escape_every_value() -> None:
    hostile = '<em class="x">it\'s & more</em>'
    escaped = "&lt;em class=&#34;x&#34;&gt;it&#39;s &amp; more&lt;/em&gt;"
    table = Table.of([hostile, "n"], [[hostile, MetricCell(text=hostile, count=hostile, interval=hostile)]], numeric=(1,))
    html = Fragment("exclusions.html.j2", {"facts": [(hostile, hostile)], "table": table}).render()
    assert "<em" not in html and html.count(escaped) == 7
    assert '<th class="num">n</th>' in html and '<td class="num">' in html
    assert f'<span class="n">{escaped}</span><br><span class="ci">{escaped}</span>' in html
    image = picture(b"\x89PNG", hostile, css_class=hostile)
    html = Fragment("training.html.j2", {"curves": image}).render()
    assert f'<img class="{escaped}" src="data:image/png;base64,iVBORw==" alt="{escaped}">' in html


def test_templates_compile_and_mark_nothing_safe() -> None:
    names = TEMPLATES.list_templates(extensions=["j2"])
    assert "report.html.j2" in names and "macros.html.j2" in names
    for name in names:
        TEMPLATES.get_template(name)
    report = Path(report_html.__file__).parent
    sources = [path.read_text(encoding="utf-8") for path in sorted(report.glob("templates/*"))]
    sources += [path.read_text(encoding="utf-8") for path in sorted(report.glob("*.py"))]
    for text in sources:
        assert not re.search(r"\|\s*safe\b|Markup\(|autoescape\s+false", text)
    with pytest.raises(jinja2.UndefinedError):  # a missing value is an error, not an empty string
        Fragment("training.html.j2", {}).render()

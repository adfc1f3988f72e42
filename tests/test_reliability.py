"""The bad-input matrix: every input a user may get wrong gives a message naming the file, the row or
slide, what is wrong and the fix; sheet, table and config problems stop before any work, per-slide
problems under ``on_error: skip`` become recorded exclusions that later stages respect.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import shared_file
from histofuse import cli
from histofuse.config import check_plain_data, validate_config
from histofuse.errors import ConfigError, HistofuseError, SlideError
from histofuse.exclusions import EXCLUSION_COLUMNS, collect_exclusions, read_exclusion, read_exclusions
from histofuse.folds import check_fold_labels
from histofuse.samples import check_data_root, check_slide_patients, check_weights_file, missing_slide_files
from histofuse.sheets import read_sheet, validate_sheet
from histofuse.slides.job import TileJob, run_tile_job
from histofuse.slides.mask import MaskSettings
from histofuse.slides.pyramid import write_pyramidal_tiff
from histofuse.slides.reader import open_slide
from histofuse.slides.tiling import TilingSettings
from histofuse.tables import TableInputs, prepare_tables
from workflow_support import REPO, snakemake

SCHEMAS = REPO / "workflow" / "schemas"
CMU = ("data", "slides", "cmu_small_region.svs")
TILING = TilingSettings(mpp=1.0, tile_px=128)
MASK = MaskSettings()


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-level pyramid of a 1024-px square of the real CMU slide (tissue on most of it)."""
    with open_slide(shared_file(*CMU)) as source:
        image = source.read_region((600, 1200), 0, (1024, 1024))
        mpp = source.info.mpp
    path = tmp_path_factory.mktemp("slides") / "small.tiff"
    write_pyramidal_tiff(path, image, mpp=mpp, levels=3)
    return path


def _truncated(tmp: Path, small: Path) -> Path:
    data = shared_file(*CMU).read_bytes()
    path = tmp / "truncated.svs"
    path.write_bytes(data[: len(data) // 2])
    return path


def _blank(tmp: Path, small: Path) -> Path:
    path = tmp / "blank.tiff"
    write_pyramidal_tiff(path, np.full((1024, 1024, 3), 244, dtype=np.uint8), mpp=0.5, levels=2)
    return path


def _corrupt_level0(tmp: Path, small: Path) -> Path:
    """The pyramid with every level-0 tile overwritten: it opens and masks, but level 0 cannot be decoded."""
    import tifffile

    data = bytearray(small.read_bytes())
    with tifffile.TiffFile(small) as tif:
        page = tif.pages[0]
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            data[offset : offset + count] = b"\0" * count
    path = tmp / "corrupt.tiff"
    path.write_bytes(bytes(data))
    return path


SLIDE_CASES = {
    # case: (make the file, what the message says)
    "truncated": (_truncated, "OpenSlide cannot read this slide"),
    "non_conformant_dicom": (lambda tmp, small: shared_file("data", "slides", "broken_dicom_wsi.dcm"), "cannot read"),
    "no_mpp": (lambda tmp, small: shared_file("data", "slides", "tcga-cr-7395-01a-01-ts1.svs"), "no resolution"),
    "no_tissue": (_blank, "no tissue found"),
    "missing": (lambda tmp, small: tmp / "absent" / "slide.svs", "does not exist"),
}


def _job(slide: Path, out: Path, slide_id: str = "S1") -> TileJob:
    return TileJob(
        slide=slide,
        slide_id=slide_id,
        mpp=None,
        reader="openslide",
        mask=out / "masks" / f"{slide_id}.png",
        mask_qc=out / "qc" / f"{slide_id}.png",
        tiles=out / "tiles" / f"{slide_id}.h5",
        qc=out / "qc" / "tiles" / f"{slide_id}.png",
    )


@pytest.mark.parametrize("case", sorted(SLIDE_CASES))
def test_bad_slide_stops_with_file_problem_and_fix(case: str, small_slide: Path, tmp_path: Path) -> None:
    make, what = SLIDE_CASES[case]
    slide = make(tmp_path, small_slide)
    job = _job(slide, tmp_path / "out")
    with pytest.raises(SlideError) as err:
        run_tile_job(job, mask_settings=MASK, settings=TILING, on_error="stop")
    message = str(err.value)
    assert str(slide) in message and what in message and "Fix:" in message
    assert not job.tiles.exists()


@pytest.mark.parametrize("case", sorted(SLIDE_CASES))
def test_bad_slide_is_an_exclusion_under_skip(case: str, small_slide: Path, tmp_path: Path) -> None:
    make, what = SLIDE_CASES[case]
    slide = make(tmp_path, small_slide)
    job = _job(slide, tmp_path / "out", slide_id=f"bad-{case}")
    assert run_tile_job(job, mask_settings=MASK, settings=TILING, on_error="skip") == 0
    record = read_exclusion(job.tiles)
    assert record is not None
    assert (record.slide, record.stage, record.file) == (f"bad-{case}", "tile", str(slide))
    assert what in record.reason and record.fix
    for png in (job.mask, job.mask_qc, job.qc):
        assert png.stat().st_size > 0  # every output of the job exists: the DAG goes on


def test_excluded_slide_passes_through_extraction_to_the_cohort_list(small_slide: Path, tmp_path: Path) -> None:
    """Extraction carries the tile stage's record on without loading an encoder; the TSV lists it."""
    out = tmp_path / "out"
    good, bad = _job(small_slide, out, "good"), _job(tmp_path / "nowhere.svs", out, "bad")
    assert run_tile_job(good, mask_settings=MASK, settings=TILING) > 0
    run_tile_job(bad, mask_settings=MASK, settings=TILING, on_error="skip")
    features = out / "features"
    for job in (good, bad):
        code = cli.main(
            ["extract", "--slide", str(job.slide), "--tiles", str(job.tiles), "--encoder", "efficientnet_lite0",
             "--device", "cpu", "--batch-size", "16", "--on-error", "skip", "--out", str(features / f"{job.slide_id}.h5")]
        )
        assert code == 0
    with h5py.File(features / "good.h5") as h5:
        assert h5["features"].shape[0] == h5["coords"].shape[0] > 0 and np.isfinite(h5["features"][()]).all()
    tsv = out / "exclusions.tsv"
    collect_exclusions(sorted(features.glob("*.h5")), tsv, encoder="efficientnet_lite0")
    table = read_exclusions(tsv)
    assert tuple(table.columns) == EXCLUSION_COLUMNS
    assert table["slide"].tolist() == ["bad"] and table["stage"].tolist() == ["tile"]
    assert "does not exist" in table["reason"][0] and "slides sheet" in table["fix"][0]


def test_corrupt_tiles_inside_a_slide_fail_or_are_excluded_at_extraction(small_slide: Path, tmp_path: Path) -> None:
    slide = _corrupt_level0(tmp_path, small_slide)
    job = _job(slide, tmp_path / "out", "corrupt")
    assert run_tile_job(job, mask_settings=MASK, settings=TilingSettings(mpp=0.5, tile_px=256)) > 0  # mask from level 2
    out = tmp_path / "out" / "features" / "corrupt.h5"
    args = ["extract", "--slide", str(slide), "--tiles", str(job.tiles), "--encoder", "efficientnet_lite0",
            "--device", "cpu", "--out", str(out)]
    assert cli.main(args) == 2 and not out.exists()
    assert cli.main([*args, "--on-error", "skip"]) == 0
    record = read_exclusion(out)
    assert record is not None and record.stage == "extract_features"
    assert "cannot read the region" in record.reason and "corrupt" in record.reason and str(slide) == record.file


def test_unicode_and_spaces_in_paths_work(small_slide: Path, tmp_path: Path) -> None:
    folder = tmp_path / "données d'été" / "lames à voir"
    folder.mkdir(parents=True)
    slide = folder / "lame 1 ü.tiff"
    shutil.copy(small_slide, slide)
    job = _job(slide, tmp_path / "résultats 1")
    assert run_tile_job(job, mask_settings=MASK, settings=TILING) > 0
    assert read_exclusion(job.tiles) is None


def test_weights_errors_stop_even_under_skip(small_slide: Path, tmp_path: Path) -> None:
    job = _job(small_slide, tmp_path / "out")
    run_tile_job(job, mask_settings=MASK, settings=TILING)
    weights = tmp_path / "other.pth"
    torch.save({"a.weight": torch.zeros(3, 3)}, weights)
    out = tmp_path / "features.h5"
    code = cli.main(
        ["extract", "--slide", str(small_slide), "--tiles", str(job.tiles), "--encoder", "efficientnet_lite0",
         "--weights", str(weights), "--device", "cpu", "--on-error", "skip", "--out", str(out)]
    )
    assert code == 2 and not out.exists()


def test_missing_weights_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        check_weights_file("weights/uni.bin", source="my.yaml")
    assert "my.yaml" in str(err.value) and "weights/uni.bin" in str(err.value) and "Fix:" in str(err.value)
    check_weights_file(None, source="my.yaml")


def test_features_of_another_encoder_stop_before_training(tmp_path: Path) -> None:
    path = tmp_path / "S1.h5"
    with h5py.File(path, "w") as h5:
        h5["features"] = np.zeros((3, 8), dtype=np.float32)
        h5["coords"] = np.zeros((3, 2), dtype=np.int64)
        h5.attrs["encoder"] = "resnet50_trunc"
    with pytest.raises(HistofuseError) as err:
        collect_exclusions([path], tmp_path / "exclusions.tsv", encoder="efficientnet_lite0")
    message = str(err.value)
    assert str(path) in message and "'resnet50_trunc'" in message and "'efficientnet_lite0'" in message
    assert "Fix:" in message and not (tmp_path / "exclusions.tsv").exists()


def test_training_leaves_excluded_slides_out(tmp_path: Path) -> None:
    from histofuse.exclusions import Exclusion, write_excluded_features
    from histofuse.training.bags import open_bag_store

    features = tmp_path / "features"
    features.mkdir()
    for slide, n in (("A1", 4), ("B1", 2)):
        with h5py.File(features / f"{slide}.h5", "w") as h5:
            h5["features"] = np.ones((n, 8), dtype=np.float32)
            h5.attrs["encoder"] = "efficientnet_lite0"
    record = Exclusion(slide="A2", stage="tile", file="a2.svs", reason="unreadable.", fix="re-export it.")
    write_excluded_features(features / "A2.h5", record, encoder="efficientnet_lite0")
    store = open_bag_store(["A", "B"], {"A": ["A1", "A2"], "B": ["B1"]}, features)
    assert store.files[0] == (features / "A1.h5",) and store.n_dim == 8 and store.encoder == "efficientnet_lite0"
    assert [tuple(store.load(i).features.shape) for i in range(2)] == [(4, 8), (2, 8)]


# ------------------------------------------------------------------------------- sheets and tables


def _sheet(path: Path, rows: dict[str, list[str]]) -> Path:
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


@pytest.mark.parametrize("id_column", ["slide_id", "patient_id"])
def test_duplicate_ids(id_column: str, tmp_path: Path) -> None:
    rows = {"slide_id": ["S1", "S2"], "patient_id": ["P1", "P2"], "path": ["a.svs", "b.svs"]}
    rows[id_column] = ["X", "X"]
    sheet = _sheet(tmp_path / "sheet.tsv", rows)
    schema = "slides" if id_column == "slide_id" else "patients"
    with pytest.raises(ConfigError) as err:
        validate_sheet(read_sheet(sheet), schema_path=SCHEMAS / f"{schema}.schema.yaml", path=sheet, id_column=id_column)
    message = str(err.value)
    assert str(sheet) in message and "row 2 (X), row 3 (X)" in message and f"unique {id_column}" in message


def test_slide_whose_patient_is_unknown(tmp_path: Path) -> None:
    slides = pd.DataFrame({"slide_id": ["S1", "S2"], "patient_id": ["P1", "P9"], "path": ["a", "b"]})
    patients = pd.DataFrame({"patient_id": ["P1"]})
    with pytest.raises(ConfigError) as err:
        check_slide_patients(slides, slides_sheet=Path("slides.tsv"), patients=patients, patients_sheet=Path("p.tsv"))
    message = str(err.value)
    assert "slides.tsv" in message and "row 3 (S2: P9)" in message and "Fix:" in message


def test_slide_path_that_does_not_exist(tmp_path: Path) -> None:
    (tmp_path / "a.svs").write_bytes(b"")
    slides = pd.DataFrame({"slide_id": ["S1", "S2"], "patient_id": ["P1", "P2"], "path": [str(tmp_path / "a.svs"), str(tmp_path / "b.svs")]})
    with pytest.raises(ConfigError) as err:
        missing_slide_files(slides, sheet=Path("slides.tsv"), on_error="stop")
    message = str(err.value)
    assert "slides.tsv" in message and f"row 3 (S2: {tmp_path / 'b.svs'})" in message and "on_error: skip" in message
    assert missing_slide_files(slides, sheet=Path("slides.tsv"), on_error="skip") == {"S2"}


def test_slide_paths_cannot_escape_the_data_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "slides").mkdir(parents=True)
    (tmp_path / "elsewhere.svs").write_bytes(b"")
    (root / "slides" / "link.svs").symlink_to(tmp_path / "elsewhere.svs")
    inside = pd.DataFrame({"slide_id": ["S1"], "patient_id": ["P1"], "path": [str(root / "slides" / "a.svs")]})
    check_data_root(inside, sheet=Path("slides.tsv"), data_root=root)
    check_data_root(inside.assign(path=["../../etc/passwd"]), sheet=Path("slides.tsv"), data_root=None)
    for escape in (str(root / "slides" / ".." / ".." / "elsewhere.svs"), str(root / "slides" / "link.svs")):
        with pytest.raises(ConfigError) as err:
            check_data_root(inside.assign(path=[escape]), sheet=Path("slides.tsv"), data_root=root)
        assert "slides.tsv" in str(err.value) and "row 2 (S1" in str(err.value) and "data_root" in str(err.value)


@pytest.fixture
def cohort(tmp_path: Path) -> dict[str, Path]:
    return {
        "patients": _sheet(tmp_path / "patients.tsv", {"patient_id": ["P1", "P2", "P3"], "grade": ["2", "3", "4"],
                                                     "survival_months": ["1", "2", "3"], "event": ["1", "0", "1"]}),
        "genomics": _sheet(tmp_path / "genomics.tsv", {"patient_id": ["P1", "P2", "P3"], "TP53_mut": ["1", "0", "1"]}),
        "clinical": _sheet(tmp_path / "clinical.tsv", {"patient_id": ["P1", "P2", "P3"], "age": ["50", "61", "70"]}),
    }


@pytest.mark.parametrize("table,column", [("genomics", "TP53_mut"), ("clinical", "age")])
@pytest.mark.parametrize("bad", ["NaN", "inf", "-inf", "unknown"])
def test_nan_inf_text_in_numeric_columns(table: str, column: str, bad: str, cohort: dict[str, Path], tmp_path: Path) -> None:
    frame = pd.read_csv(cohort[table], sep="\t", dtype=str)
    frame.loc[1, column] = bad
    frame.to_csv(cohort[table], sep="\t", index=False)
    with pytest.raises(ConfigError) as err:
        prepare_tables(TableInputs(slides=None, **cohort), tmp_path / "out")
    message = str(err.value)
    assert str(cohort[table]) in message and f"row 3 (P2) = '{bad}'" in message and f"'{column}'" in message
    assert "Fix:" in message


def test_label_outside_its_allowed_values(cohort: dict[str, Path], tmp_path: Path) -> None:
    frame = pd.read_csv(cohort["patients"], sep="\t", dtype=str)
    frame.loc[2, "grade"] = "IV"
    frame.to_csv(cohort["patients"], sep="\t", index=False)
    with pytest.raises(ConfigError) as err:
        prepare_tables(TableInputs(slides=None, **cohort), tmp_path / "out")
    message = str(err.value)
    assert str(cohort["patients"]) in message and "row 4 (P3)" in message and "labels.grade_classes" in message


def test_patient_with_no_slide_and_no_other_modality(cohort: dict[str, Path], tmp_path: Path) -> None:
    frame = pd.read_csv(cohort["patients"], sep="\t", dtype=str)
    frame.loc[3] = ["P4", "2", "5", "0"]
    frame.to_csv(cohort["patients"], sep="\t", index=False)
    with pytest.raises(ConfigError) as err:
        prepare_tables(TableInputs(slides=None, **cohort), tmp_path / "out")
    assert str(cohort["patients"]) in str(err.value) and "P4" in str(err.value) and "Fix:" in str(err.value)


@pytest.mark.parametrize("task", ["grade", "survival"])
def test_every_label_missing_for_a_task_in_a_fold(task: str) -> None:
    patients = pd.DataFrame(
        {"patient_id": list("ABCDEF"), "grade": pd.array([0, 1, None, None, 2, 0], dtype="Int64"),
         "survival_time": [1.0, 2, np.nan, 4, 5, 6], "event": pd.array([1, 1, 0, 0, 1, 0], dtype="Int64")}
    )
    folds = pd.DataFrame({"patient_id": list("ABCDEF"), "fold": [0, 0, 1, 1, 0, 1],
                          "split": ["train", "train", "train", "train", "test", "test"]})
    check_fold_labels(folds.assign(fold=0), patients, ("grade", "survival"))
    with pytest.raises(ConfigError) as err:
        check_fold_labels(folds, patients, (task,), path=Path("patients.parquet"))
    message = str(err.value)
    assert "patients.parquet" in message and f"fold 1, task '{task}'" in message and "training.tasks" in message


def test_binary_task_labels_come_from_the_binary_label_column() -> None:
    patients = pd.DataFrame({"patient_id": list("ABCD"), "ln_status": pd.array([0, 1, None, None], dtype="Int64")})
    folds = pd.DataFrame({"patient_id": list("ABCD"), "fold": [0, 0, 1, 1], "split": ["train"] * 4})
    check_fold_labels(folds.assign(fold=0), patients, ("binary",), binary_label="ln_status")
    with pytest.raises(ConfigError, match="fold 1, task 'binary'"):
        check_fold_labels(folds, patients, ("binary",), binary_label="ln_status")
    with pytest.raises(ConfigError, match="no column aln"):
        check_fold_labels(folds, patients, ("binary",))  # the default column, absent here


# ----------------------------------------------------------------------------------------- config


def _config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_misspelt_config_key_gets_a_did_you_mean() -> None:
    config = _config()
    config["tiling"]["tile_pxx"] = 256
    config["on_eror"] = "skip"
    with pytest.raises(ConfigError) as err:
        validate_config(config, source="my.yaml")
    message = str(err.value)
    assert "my.yaml" in message and "'tile_pxx' -> 'tile_px'" in message and "'on_eror' -> 'on_error'" in message


def test_config_value_of_the_wrong_type() -> None:
    config = _config()
    config["on_error"] = "ignore"
    config["tiling"]["tile_px"] = "256px"
    with pytest.raises(ConfigError) as err:
        validate_config(config, source="my.yaml")
    message = str(err.value)
    assert "'on_error'" in message and "use one of: stop, skip" in message and "'tiling.tile_px'" in message


@pytest.mark.parametrize("text", ["results: !!python/name:os.system\n", "__use_yte__: true\nresults: ?'r' * 2\n"])
def test_config_is_plain_data(text: str, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        check_plain_data([path])
    assert str(path) in str(err.value) and "Fix:" in str(err.value)
    check_plain_data([REPO / "config" / "config.yaml"])


# ------------------------------------------------------------------------- at DAG build, nothing runs


def _project(tmp_path: Path) -> tuple[Path, dict]:
    slide = tmp_path / "s1.svs"
    slide.write_bytes(b"")
    sheet = _sheet(tmp_path / "slides.tsv", {"slide_id": ["S1", "S2"], "patient_id": ["P1", "P2"], "path": ["s1.svs", "s1.svs"]})
    patients = _sheet(tmp_path / "patients.tsv", {"patient_id": ["P1", "P2"], "grade": ["2", "3"]})
    config = {"results": str(tmp_path / "results"), "samples": {"slides": str(sheet), "patients": str(patients)},
              "tables": {"genomics": None, "gene_groups": None, "clinical": None}}
    return sheet, config


@pytest.mark.parametrize("case", ["misspelt_key", "missing_slide", "duplicate_column", "text_in_numbers", "no_label"])
def test_problems_stop_when_the_dag_is_built(case: str, tmp_path: Path) -> None:
    sheet, config = _project(tmp_path)
    if case == "no_label":
        ids = ["P1", "P2", "P3", "P4"]
        _sheet(sheet, {"slide_id": [f"S{i}" for i in range(4)], "patient_id": ids, "path": ["s1.svs"] * 4})
        patients = _sheet(tmp_path / "patients.tsv", {"patient_id": ids, "grade": [""] * 4})
        config.update(folds={"k": 2}, training={"tasks": ["grade"]})
        expected = [str(patients), "task 'grade'", "training.tasks"]
    elif case == "misspelt_key":
        config["tilling"] = {"mpp": 0.5}
        expected = ["'tilling' -> 'tiling'"]
    elif case in ("duplicate_column", "text_in_numbers"):
        genomics = tmp_path / "genomics.tsv"
        if case == "duplicate_column":
            genomics.write_text("patient_id\tTP53_cnv\tTP53_cnv\nP1\t1\t0\nP2\t0\t1\n")
            expected = [str(genomics), "'TP53_cnv' (columns 2, 3)", "Fix:"]
        else:
            genomics.write_text("patient_id\tTP53_cnv\nP1\t1\nP2\tunknown\n")
            expected = [str(genomics), "row 3 (P2) = 'unknown'", "Fix:"]
        config["tables"]["genomics"] = str(genomics)
    else:
        _sheet(sheet, {"slide_id": ["S1", "S2"], "patient_id": ["P1", "P2"], "path": ["s1.svs", "gone é.svs"]})
        expected = [str(sheet), f"row 3 (S2: {tmp_path / 'gone é.svs'})", "Fix:"]
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True))
    proc = snakemake("--cores", "1", "--configfile", str(config_path), timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for part in expected:
        assert part in text, (part, text[-3000:])
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------- input accepted silently, now reported


def test_a_column_named_twice_is_refused_with_both_positions(cohort: dict[str, Path], tmp_path: Path) -> None:
    frame = pd.read_csv(cohort["genomics"], sep="\t", dtype=str)
    frame["PTEN_cnv"] = ["0", "1", "0"]
    frame.to_csv(cohort["genomics"], sep="\t", index=False)
    text = cohort["genomics"].read_text().replace("PTEN_cnv", "TP53_mut", 1)
    cohort["genomics"].write_text(text)
    with pytest.raises(ConfigError) as err:
        prepare_tables(TableInputs(slides=None, **cohort), tmp_path / "out")
    message = str(err.value)
    assert str(cohort["genomics"]) in message and "'TP53_mut' (columns 2, 3)" in message and "Fix:" in message
    assert not (tmp_path / "out" / "genomics.parquet").exists()


def test_a_column_named_twice_in_a_published_table_is_refused(tmp_path: Path) -> None:
    from histofuse.cohorts.reading import read_table

    path = tmp_path / "clinical.csv"
    path.write_text("case_id,age,sex,age\nC1,50,F,51\n")
    with pytest.raises(ConfigError, match=r"'age' \(columns 2, 4\)"):
        read_table(path)


def test_whitespace_around_ids_is_removed_with_a_note_naming_them(
    cohort: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from histofuse.notes import read_notes
    from histofuse.tables import prepare_cohort_tables

    for table, row, padded in (("genomics", 1, "P2 "), ("patients", 2, " P3")):
        frame = pd.read_csv(cohort[table], sep="\t", dtype=str)
        frame.loc[row, "patient_id"] = padded
        frame.to_csv(cohort[table], sep="\t", index=False)
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        notes = prepare_cohort_tables(cohort_format="histofuse", format_options={}, slides=None, out_dir=out, **cohort)
    assert pd.read_parquet(out / "genomics.parquet")["patient_id"].tolist() == ["P1", "P2", "P3"]
    assert pd.read_parquet(out / "patients.parquet")["patient_id"].tolist() == ["P1", "P2", "P3"]
    assert any(str(cohort["genomics"]) in n and "'P2 ' (row 3)" in n for n in notes), notes
    assert any(str(cohort["patients"]) in n and "' P3' (row 4)" in n for n in notes), notes
    assert read_notes(out / "notes.tsv") == notes and "'P2 ' (row 3)" in caplog.text


def test_whitespace_around_ids_of_a_published_table_is_noted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from histofuse.cohorts.checks import patient_ids
    from histofuse.cohorts.reading import read_table

    path = tmp_path / "clinical.csv"
    path.write_text("case_id,age\nC1,50\nC2 ,61\n")
    with caplog.at_level("WARNING"):
        ids = patient_ids(read_table(path), "case_id", path=path)
    assert ids.tolist() == ["C1", "C2"] and "'C2 ' (row 3)" in caplog.text and str(path) in caplog.text


@pytest.mark.parametrize("table", ["genomics", "clinical"])
def test_rows_of_unknown_patients_are_listed_by_id(table: str, cohort: dict[str, Path], tmp_path: Path) -> None:
    from histofuse.tables import prepare_cohort_tables

    frame = pd.read_csv(cohort[table], sep="\t", dtype=str)
    frame.loc[2, "patient_id"] = "P9"
    frame.to_csv(cohort[table], sep="\t", index=False)
    notes = prepare_cohort_tables(cohort_format="histofuse", format_options={}, slides=None, out_dir=tmp_path, **cohort)
    assert any(str(cohort[table]) in n and "row 4 ('P9')" in n and "left out" in n for n in notes), notes
    assert "P9" not in set(pd.read_parquet(tmp_path / f"{table}.parquet")["patient_id"])


# ------------------------------------------------------------------------- what the messages measure


def _scattered(tmp: Path) -> Path:
    """Thin stripes of tissue: the mask finds some, but no tile is half tissue."""
    image = np.full((2048, 2048, 3), 240, dtype=np.uint8)
    for x in range(0, 2048, 48):
        image[:, x : x + 16] = (190, 90, 150)
    path = tmp / "stripes.tiff"
    write_pyramidal_tiff(path, image, mpp=0.5, levels=3)
    return path


def test_no_tissue_message_agrees_with_the_measured_mask(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import re

    job = _job(_scattered(tmp_path), tmp_path / "out")
    with caplog.at_level("INFO"), pytest.raises(SlideError) as err:
        run_tile_job(job, mask_settings=MASK, settings=TilingSettings(mpp=0.5, tile_px=256))
    logged = re.search(r"tissue (\d+\.\d) %", caplog.text)
    assert logged is not None and float(logged.group(1)) > 0
    message = str(err.value)
    assert f"covers {logged.group(1)} %" in message and "empty" not in message


def test_under_stop_the_qc_thumbnail_the_message_names_is_kept(small_slide: Path, tmp_path: Path) -> None:
    job = _job(_blank(tmp_path, small_slide), tmp_path / "out")
    with pytest.raises(SlideError) as err:
        run_tile_job(job, mask_settings=MASK, settings=TILING, on_error="stop")
    for output in (job.mask, job.mask_qc):  # what Snakemake deletes of a failed job
        output.unlink(missing_ok=True)
    assert str(job.failed_qc) in str(err.value) and job.failed_qc.stat().st_size > 0
    assert job.failed_qc.parent != job.mask_qc.parent


# --------------------------------------------------------------------- models without input for a patient


def test_a_slides_only_model_leaves_out_patients_without_tile_features(tmp_path: Path) -> None:
    import dataclasses

    from histofuse.left_out import read_left_out
    from histofuse.training.trainer import NO_TILE_FEATURES, train_fold
    from test_training import EMPTY_PATIENTS, FAST, _make_cohort

    cohort = _make_cohort(tmp_path / "cohort")
    fold = pd.read_csv(cohort["folds_tsv"], sep="\t").query("fold == 0")
    assert set(EMPTY_PATIENTS) <= set(fold["patient_id"])
    for model_name, left_out in (("abmil", set(EMPTY_PATIENTS)), ("snn", set())):
        out = tmp_path / model_name
        train_fold(
            model_name=model_name, fold=0, settings=dataclasses.replace(FAST, epochs=2), **cohort,
            out_checkpoint=out / "m.pt", out_predictions=out / "p.parquet", out_history=None,
        )
        predicted = set(pd.read_parquet(out / "p.parquet")["patient_id"])
        assert predicted == set(fold["patient_id"]) - left_out
        recorded = read_left_out(out / "p.parquet")
        assert set(recorded["patient_id"]) == left_out and (recorded["reason"] == NO_TILE_FEATURES).all()


def test_the_report_counts_the_patients_each_model_left_out(tmp_path: Path) -> None:
    from histofuse.left_out import write_predictions
    from histofuse.report.sections import input_notes_section

    files = []
    for model, left in (("abmil", ["P1", "P2"]), ("snn", [])):
        path = tmp_path / model / "fold0.parquet"
        path.parent.mkdir()
        left_out = pd.DataFrame({"patient_id": left, "split": ["test", "train"][: len(left)], "reason": ["no slide"] * len(left)})
        write_predictions(pd.DataFrame({"patient_id": ["P3"], "model": [model]}), path, left_out=left_out)
        assert pd.read_parquet(path)["patient_id"].tolist() == ["P3"]
        files.append(path)
    html = input_notes_section(["genomics.tsv: 1 row(s) for patients not in the patients sheet are left out: row 4 ('P9')"], files)
    assert "row 4 (&#39;P9&#39;)" in html or "row 4 ('P9')" in html  # Jinja2 autoescape writes ' as &#39;
    assert "<td>abmil</td><td>no slide</td><td>2</td><td>1</td>" in html.replace("\n", "") and "<td>snn</td>" not in html


@pytest.mark.slow
def test_a_failed_slide_keeps_its_qc_and_skip_reruns_only_it(tmp_path: Path) -> None:
    """Under stop the message's thumbnail outlives Snakemake's clean-up; then `on_error: skip` (as the
    message suggests) tiles only the failed slide again."""
    from histofuse.demo import DemoSpec
    from workflow_support import demo_config, jobs_run, make_cohort, slides_run, write_config

    cohort = make_cohort(tmp_path, DemoSpec(n_patients=2, n_slides=2, min_side_px=1024, max_side_px=1024, seed=3))
    blank = cohort["slides_dir"] / "blank.tiff"
    write_pyramidal_tiff(blank, np.full((1024, 1024, 3), 244, dtype=np.uint8), mpp=0.5, levels=2)
    sheet = pd.read_csv(cohort["slides_sheet"], sep="\t")
    patient = sheet["patient_id"].iloc[0]
    pd.concat([sheet, pd.DataFrame({"slide_id": ["WHITE-1"], "patient_id": [patient], "path": [str(blank)]})]).to_csv(
        cohort["slides_sheet"], sep="\t", index=False
    )
    config_path = write_config(tmp_path / "config.yaml", demo_config(tmp_path, cohort))
    args = ("--cores", "2", "--configfile", str(config_path), "--until", "tile")

    stopped = snakemake(*args, timeout=600)
    assert stopped.returncode != 0
    log = (tmp_path / "results" / "logs" / "tile" / "WHITE-1.log").read_text()
    kept = tmp_path / "results" / "qc" / "failed" / "WHITE-1.png"
    assert str(kept) in log and kept.stat().st_size > 0, log[-2000:]
    assert not (tmp_path / "results" / "qc" / "WHITE-1.png").exists()  # the job's own output was removed
    assert slides_run(stopped, "tile") == set(sheet["slide_id"]) | {"WHITE-1"}

    write_config(config_path, demo_config(tmp_path, cohort, on_error="skip"))
    skipped = snakemake(*args, timeout=600)
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert slides_run(skipped, "tile") == {"WHITE-1"} and jobs_run(skipped)["tile"] == 1
    assert (tmp_path / "results" / "qc" / "WHITE-1.png").is_file() and not kept.exists()


# ------------------------------------------------------- settings every job builds, checked at DAG build


def _validated(**changes: dict) -> dict:
    config = _config()
    for section, values in changes.items():
        config[section] = {**config[section], **values} if isinstance(config.get(section), dict) else values
    return validate_config(config, source="my.yaml")


@pytest.mark.parametrize(
    "changes,key",
    [
        ({"tiling": {"tile_px": 256, "overlap_px": 256}}, "tiling.overlap_px"),
        ({"features": {"stain_norm": "macenko", "stain_target": None}}, "features.stain_target"),
        ({"features": {"stain_norm": "macenko", "stain_target": "absent/target.png"}}, "features.stain_target"),
        ({"features": {"encoder": "no_such_encoder"}}, "features.encoder"),
        ({"features": {"source": "precomputed", "precomputed_dir": "absent/folder"}}, "features.precomputed_dir"),
    ],
)
def test_slide_settings_stop_before_any_job(changes: dict, key: str) -> None:
    from histofuse.stage_settings import check_slide_settings

    check_slide_settings(_validated(), source="my.yaml")
    with pytest.raises(ConfigError) as err:
        check_slide_settings(_validated(**changes), source="my.yaml")
    assert "my.yaml" in str(err.value) and f"'{key}'" in str(err.value)


@pytest.mark.parametrize(
    "changes,key",
    [
        ({"labels": {"grade_classes": ["2", "2", "4"]}}, "labels.grade_classes"),
        ({"training": {"models": ["cox"], "cox": {"covariates": []}}}, "training.cox.covariates"),
    ],
)
def test_cohort_settings_stop_before_any_job(changes: dict, key: str) -> None:
    from histofuse.stage_settings import check_cohort_settings

    check_cohort_settings(_validated(), source="my.yaml")
    with pytest.raises(ConfigError) as err:
        check_cohort_settings(_validated(**changes), source="my.yaml")
    assert "my.yaml" in str(err.value) and f"'{key}'" in str(err.value)


@pytest.mark.parametrize("value", ["NaN", "inf"])
def test_nan_or_inf_in_a_sheet_number_is_refused(value: str, tmp_path: Path) -> None:
    sheet = _sheet(tmp_path / "slides.tsv", {"slide_id": ["S1"], "patient_id": ["P1"], "path": ["a.svs"], "mpp": [value]})
    with pytest.raises(ConfigError) as err:
        validate_sheet(read_sheet(sheet), schema_path=SCHEMAS / "slides.schema.yaml", path=sheet, id_column="slide_id")
    assert str(sheet) in str(err.value) and "row 2 (slide_id=S1), column 'mpp'" in str(err.value)


def test_unread_or_half_given_patient_columns_are_noted(cohort: dict[str, Path], tmp_path: Path) -> None:
    from histofuse.tables import prepare_cohort_tables

    frame = pd.read_csv(cohort["patients"], sep="\t", dtype=str).rename(columns={"grade": "Grade"})
    frame.loc[1, "event"] = None
    frame.to_csv(cohort["patients"], sep="\t", index=False)
    notes = prepare_cohort_tables(cohort_format="histofuse", format_options={}, slides=None, out_dir=tmp_path, **cohort)
    assert any("'Grade' (did you mean 'grade'?)" in n and str(cohort["patients"]) in n for n in notes), notes
    assert any("row 3 (P2)" in n and "no survival label" in n for n in notes), notes


def test_slides_without_precomputed_features_stop_before_any_job(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from histofuse.features.precomputed import check_precomputed_folder

    folder = tmp_path / "clam"
    (folder / "h5_files").mkdir(parents=True)
    for slide in ("S1", "S3"):
        (folder / "h5_files" / f"{slide}.h5").write_bytes(b"")
    (folder / "S3.h5").write_bytes(b"")
    check_precomputed_folder(["S1"], folder, "uni", on_error="stop")
    with pytest.raises(ConfigError) as err:
        check_precomputed_folder(["S1", "S2", "S3"], folder, "uni", on_error="stop")
    message = str(err.value)
    assert str(folder) in message and "no file for 1 slide(s): S2" in message and "several files for 1 slide(s): S3" in message
    assert "h5_files/{slide}.h5" in message and "on_error: skip" in message
    with caplog.at_level("WARNING"):
        check_precomputed_folder(["S1", "S2"], folder, "uni", on_error="skip")
    assert "S2" in caplog.text


def test_genes_the_group_list_and_the_table_do_not_share_are_noted(cohort: dict[str, Path], tmp_path: Path) -> None:
    from histofuse.tables import prepare_cohort_tables

    groups = tmp_path / "groups.csv"
    groups.write_text("gene,group\nTP53,tumour\nBRCA1,tumour\n")
    frame = pd.read_csv(cohort["genomics"], sep="\t", dtype=str).assign(CD8A_rnaseq=["1", "2", "3"])
    frame.to_csv(cohort["genomics"], sep="\t", index=False)
    notes = prepare_cohort_tables(
        cohort_format="histofuse", format_options={}, slides=None, out_dir=tmp_path / "out", **{**cohort, "gene_groups": groups}
    )
    assert any("no column for: BRCA1" in n for n in notes) and any("'ungrouped'): CD8A" in n for n in notes), notes


def test_attention_of_an_excluded_slide_says_why(tmp_path: Path) -> None:
    """The report's first slides may include an excluded one: its attention image is a note, not a failure."""
    from PIL import Image

    from histofuse.exclusions import Exclusion, write_excluded_features
    from histofuse.report.attention import write_attention_png

    features = tmp_path / "S1.h5"
    record = Exclusion(slide="S1", stage="tile", file="s1.svs", reason="OpenSlide cannot read this slide.", fix="re-export it.")
    write_excluded_features(features, record, encoder="efficientnet_lite0")
    out = tmp_path / "S1.png"
    write_attention_png(slide_id="S1", slide_path=tmp_path / "s1.svs", features_h5=features, checkpoints={},
                        slides_table=tmp_path / "absent.parquet", folds_tsv=tmp_path / "absent.tsv", out_png=out)
    with Image.open(out) as image:
        assert image.size[0] > 100


def test_one_file_under_two_slide_ids_is_noted(cohort: dict[str, Path], tmp_path: Path) -> None:
    from histofuse.tables import prepare_cohort_tables

    slides = _sheet(tmp_path / "slides.tsv", {"slide_id": ["S1", "S2", "S3"], "patient_id": ["P1", "P2", "P3"],
                                              "path": ["a.svs", "b.svs", "a.svs"]})
    notes = prepare_cohort_tables(cohort_format="histofuse", format_options={}, slides=slides, out_dir=tmp_path / "out", **cohort)
    assert any("row 2 (S1) = " in n and "row 4 (S3) = " in n and "several slide ids" in n for n in notes), notes

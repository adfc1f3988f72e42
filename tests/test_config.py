"""Configuration and sample-sheet validation: defaults filled, errors name key / row / column."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml

from histofuse.config import validate_config
from histofuse.errors import ConfigError
from histofuse.sheets import read_sheet, validate_sheet

SCHEMAS = Path(__file__).resolve().parents[1] / "workflow" / "schemas"
CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"


def _config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_shipped_config_is_valid_and_every_key_is_commented() -> None:
    validate_config(_config())
    lines = CONFIG.read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and ":" in stripped:
            assert lines[i - 1].strip().startswith("#") or stripped.endswith(":"), f"key without comment: {line}"


def test_defaults_are_filled() -> None:
    config = {"samples": {"slides": "s.tsv", "patients": "p.tsv"}}
    validate_config(config)
    assert config["results"] == "results"
    assert config["tiling"]["mpp"] == 0.5 and config["tiling"]["tile_px"] == 256
    assert config["folds"]["k"] == 5
    assert config["training"]["models"] == ["mm_baseline"]


def test_misspelt_and_mistyped_keys_are_named() -> None:
    config = _config()
    config["tiling"]["tile_size"] = 256
    config["folds"]["k"] = "five"
    with pytest.raises(ConfigError) as err:
        validate_config(copy.deepcopy(config), source="my.yaml")
    text = str(err.value)
    assert "my.yaml" in text
    assert "'tiling'" in text and "tile_size" in text and "allowed keys" in text
    assert "'folds.k'" in text


def test_sheet_errors_name_row_and_column(tmp_path: Path) -> None:
    sheet = tmp_path / "slides.tsv"
    pd.DataFrame(
        {"slide_id": ["A", "B", "B"], "patient_id": ["p", "q", "r"], "path": ["a", "b", "c"], "mpp": ["0.5", "-1", ""]}
    ).to_csv(sheet, sep="\t", index=False)
    with pytest.raises(ConfigError) as err:
        validate_sheet(read_sheet(sheet), schema_path=SCHEMAS / "slides.schema.yaml", path=sheet, id_column="slide_id")
    text = str(err.value)
    assert str(sheet) in text and "row 3 (slide_id=B), column 'mpp'" in text


def test_duplicate_ids_and_missing_columns(tmp_path: Path) -> None:
    sheet = tmp_path / "slides.tsv"
    pd.DataFrame({"slide_id": ["A", "A"], "patient_id": ["p", "q"], "path": ["a", "b"]}).to_csv(sheet, sep="\t", index=False)
    with pytest.raises(ConfigError, match=r"duplicate slide_id values: row 2 \(A\), row 3 \(A\)"):
        validate_sheet(read_sheet(sheet), schema_path=SCHEMAS / "slides.schema.yaml", path=sheet, id_column="slide_id")
    pd.DataFrame({"slide_id": ["A"], "path": ["a"]}).to_csv(sheet, sep="\t", index=False)
    with pytest.raises(ConfigError, match="patient_id"):
        validate_sheet(read_sheet(sheet), schema_path=SCHEMAS / "slides.schema.yaml", path=sheet, id_column="slide_id")


def test_ksf_mcat_subspaces_name_mcat_families() -> None:
    from histofuse.cohorts import read_signatures

    overlay = yaml.safe_load((CONFIG.parent / "examples" / "ksf_subspaces_mcat.yaml").read_text())
    config = _config()
    config["training"].update(overlay["training"])
    validate_config(config)
    signatures = CONFIG.parents[1].parent / "shared" / "data" / "tables" / "mcat_ucec" / "datasets_csv_sig_signatures.csv"
    if not signatures.exists():
        pytest.skip(f"MCAT's gene families are not at {signatures}")
    groups = read_signatures(signatures)
    sizes = groups.groupby("group")["gene"].nunique()
    subspaces = overlay["training"]["subspaces"]
    assert set(subspaces) == {"tumour", "microenvironment"}
    for names in subspaces.values():
        assert set(names) <= set(sizes.index)
    tumour = set(groups.loc[groups["group"].isin(subspaces["tumour"]), "gene"])
    micro = set(groups.loc[groups["group"].isin(subspaces["microenvironment"]), "gene"])
    assert (len(tumour), len(micro)) == (410, 452)
    assert {"TP53", "PTEN", "EGFR"} <= tumour and {"IL6", "TGFB1", "VEGFA"} <= micro

"""The typed configuration is the one description: the schema, config.yaml and the stages agree with it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from histofuse.config import validate_config
from histofuse.configuration import (
    SCHEMA_PATH,
    HistofuseConfig,
    TrainingRunConfig,
    schema_text,
    section_json,
)
from histofuse.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "config.yaml"

DEMO_VALUES: dict[str, Any] = {
    "tiling.mpp": 1.0,
    "evaluation.bootstrap": 200,
    "report.title": "histofuse report — demo cohort",
    "samples.slides": "resources/demo/slides.tsv",
    "samples.patients": "resources/demo/patients.tsv",
    "tables.genomics": "resources/demo/genomics.tsv",
    "tables.gene_groups": "resources/demo/gene_groups.csv",
    "tables.clinical": "resources/demo/clinical.tsv",
}
"""The keys whose value in config/config.yaml is the demo's, not the default (the comments say so)."""


def _defaults(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every key of ``model`` (sections descended into) with its default; required sections as {}."""
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            values.update(_defaults(annotation, f"{key}."))
        else:
            values[key] = field.get_default(call_default_factory=True)
    return values


def _flatten(data: dict[str, Any], model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, value in data.items():
        field = model.model_fields.get(name)
        annotation = field.annotation if field is not None else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(value, dict):
            values.update(_flatten(value, annotation, f"{prefix}{name}."))
        else:
            values[f"{prefix}{name}"] = value
    return values


def test_committed_schema_is_the_generated_one() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), (
        "workflow/schemas/config.schema.yaml is stale: run `python -m histofuse.configuration`"
    )


def test_config_yaml_and_the_models_have_the_same_keys_and_defaults() -> None:
    shipped = _flatten(yaml.safe_load(CONFIG.read_text(encoding="utf-8")), HistofuseConfig)
    defaults = _defaults(HistofuseConfig)
    assert sorted(shipped) == sorted(defaults)
    differing = {key: value for key, value in shipped.items() if value != defaults[key]}
    assert differing == DEMO_VALUES


def test_schema_defaults_are_the_models() -> None:
    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    tiling = schema["$defs"]["TilingConfig"]["properties"]
    assert tiling["mpp"]["default"] == 0.5 and tiling["tile_px"]["minimum"] == 16
    training = schema["$defs"]["TrainingConfig"]["properties"]
    assert training["hidden_dim"]["minimum"] == 1 and training["n_bins"]["minimum"] == 1
    assert training["dropout"]["exclusiveMaximum"] == 1
    assert schema["$defs"]["TissueMaskConfig"]["properties"]["mpp"]["default"] == 8.0


def _dataclass_defaults(cls: type) -> dict[str, Any]:
    values = {}
    for item in dataclasses.fields(cls):
        if item.default is not dataclasses.MISSING:
            values[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            values[item.name] = item.default_factory()
    return values


def _plain(value: Any, like: Any) -> Any:
    """``value`` as the model's type: tuples as lists, (key, value) pairs as a mapping."""
    if isinstance(value, tuple):
        return dict(value) if isinstance(like, dict) else list(value)
    return value


def test_stage_settings_defaults_are_the_models() -> None:
    from histofuse.evaluate import EvaluationSettings
    from histofuse.features.extract import ExtractSettings
    from histofuse.folds import FoldSettings
    from histofuse.preprocess import PreprocessSettings
    from histofuse.slides.mask import MaskSettings
    from histofuse.slides.tiling import TilingSettings
    from histofuse.training.cox import CoxFeatureSettings, CoxSettings
    from histofuse.training.settings import TrainSettings

    config = HistofuseConfig.model_validate({"samples": {}})
    pairs = [
        (MaskSettings, config.tissue_mask),
        (TilingSettings, config.tiling),
        (ExtractSettings, config.features),
        (FoldSettings, config.folds),
        (PreprocessSettings, config.preprocessing),
        (CoxSettings, config.training.cox),
        (CoxFeatureSettings, config.training.cox_genomic),
        (TrainSettings, TrainingRunConfig()),
    ]
    for cls, section in pairs:
        for name, default in _dataclass_defaults(cls).items():
            if name in type(section).model_fields:
                model_default = getattr(section, name)
                assert _plain(default, model_default) == model_default, f"{cls.__name__}.{name}"
    assert EvaluationSettings().n_boot == config.evaluation.bootstrap


def test_bounds_are_the_runtime_limits() -> None:
    from histofuse.training.settings import TrainSettings

    for key, value in (("hidden_dim", 1), ("n_bins", 1), ("dropout", 0.95)):
        config = {"samples": {}, "training": {key: value}}
        validate_config(config)
        TrainSettings.from_mapping({key: value})
    with pytest.raises(ConfigError, match="training.dropout"):
        validate_config({"samples": {}, "training": {"dropout": 1.0}})


def test_companion_keys_are_required() -> None:
    with pytest.raises(ConfigError, match="key 'features.precomputed_dir': is required"):
        validate_config({"samples": {}, "features": {"source": "precomputed"}}, source="c.yaml")
    with pytest.raises(ConfigError, match="key 'features.stain_target': is required with stain_norm: macenko"):
        validate_config({"samples": {}, "features": {"stain_norm": "macenko"}})


def test_enum_and_type_errors_name_the_choices() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config({"samples": {}, "features": {"device": "gpu"}, "labels": {"grade_classes": [1.5, "x"]}})
    text = str(err.value)
    assert "key 'features.device'" in text and "use one of: auto, cpu, cuda" in text
    assert text.count("key 'labels.grade_classes.0'") == 1


def test_section_json_round_trips_a_quote() -> None:
    config = HistofuseConfig.model_validate({"samples": {}, "features": {"weights": "it's/weights.pt"}})
    text = section_json(config.features)
    assert type(config.features).model_validate_json(text).weights == "it's/weights.pt"


def _shell_command(text: str, rule: str) -> str:
    """The first shell command a dry run (``-p``) prints for ``rule``."""
    import re

    for block in re.split(r"^(?=(?:local)?rule \w+:$)", text, flags=re.M):
        if re.match(rf"(?:local)?rule {rule}:$", block, flags=re.M):
            lines = [line.split("Shell command:", 1)[1] for line in block.splitlines() if "Shell command:" in line]
            if lines:
                return lines[0].strip()
    raise AssertionError(f"no shell command of {rule} in the dry run")


def test_values_with_quotes_survive_the_shell(tmp_path: Path) -> None:
    """A results folder and a weights path holding a single quote reach the stage commands intact."""
    import json
    import os
    import shlex
    import subprocess
    import sys

    from workflow_support import TINY, demo_config, make_cohort, snakemake, write_config

    weights = tmp_path / "it's weights.pt"
    weights.write_bytes(b"")
    cohort = make_cohort(tmp_path, TINY)
    config = demo_config(tmp_path, cohort, features={"weights": str(weights)})
    config["results"] = str(tmp_path / "it's results")
    path = write_config(tmp_path / "config.yaml", config)
    proc = snakemake("-n", "-p", "--cores", "1", "--configfile", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    extract = shlex.split(_shell_command(text, "extract_features"))
    assert json.loads(extract[extract.index("--settings") + 1])["weights"] == str(weights)
    tile = _shell_command(text, "tile")
    argv = shlex.split(tile.split(" > ")[0])
    for flag in ("--mask", "--mask-qc", "--out", "--qc"):
        Path(argv[argv.index(flag) + 1]).parent.mkdir(parents=True, exist_ok=True)
    Path(shlex.split(tile.split(" > ")[1])[0]).parent.mkdir(parents=True, exist_ok=True)
    shell = f'histofuse() {{ {shlex.quote(sys.executable)} -m histofuse "$@"; }}; {tile}'
    env = {**os.environ, "HISTOFUSE_ON_ERROR": "stop"}  # set by the workflow for every job
    run = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, check=False, env=env)
    assert run.returncode == 0, run.stderr
    assert Path(argv[argv.index("--out") + 1]).is_file()


def test_readme_schema_and_help_commands_run_as_written(tmp_path: Path) -> None:
    """README: `.venv/bin/python -m histofuse.configuration` and `.venv/bin/histofuse <stage> --help`,
    typed without the venv on PATH."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != bin_dir)}
    out = tmp_path / "schema.yaml"
    schema = subprocess.run([str(bin_dir / "python"), "-m", "histofuse.configuration", str(out)], cwd=repo, env=env, check=False)
    assert schema.returncode == 0 and out.read_text(encoding="utf-8") == schema_text()
    helped = subprocess.run(
        [str(bin_dir / "histofuse"), "tile", "--help"], cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    assert helped.returncode == 0 and "--settings" in helped.stdout and "tile_px" in helped.stdout

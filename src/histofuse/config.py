"""Loading and validating the pipeline configuration (:mod:`histofuse.configuration`), and the JSON
schemas the sample sheets are checked against (:mod:`histofuse.sheets`).

Every error names the file, the key (or row and column) and how to fix it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic import ValidationError

from histofuse.configuration import HistofuseConfig, validation_problems
from histofuse.errors import ConfigError

log = logging.getLogger(__name__)


def load_schema(path: str | Path) -> dict[str, Any]:
    """Read a YAML JSON-schema file."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


def check_plain_data(paths: list[str] | list[Path]) -> None:
    """Refuse config files that are more than data: YAML tags that name Python objects, or YTE templates.

    Each file is parsed with ``yaml.safe_load``; the pipeline never evaluates anything in a config.
    """
    for path in map(Path, paths):
        try:
            with open(path, encoding="utf-8") as handle:
                document = yaml.safe_load(handle)
        except yaml.constructor.ConstructorError as err:
            raise ConfigError(
                f"the configuration is not plain data ({str(err).splitlines()[0]} {err.problem_mark}).",
                path=path,
                fix="remove YAML tags such as !!python/...; give plain values (strings, numbers, lists, mappings).",
            ) from err
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read the configuration ({err}).", path=path, fix="write it as YAML.") from err
        if isinstance(document, dict) and "__use_yte__" in document:
            raise ConfigError(
                "the configuration is a YTE template (__use_yte__), which runs Python code.",
                path=path,
                column="__use_yte__",
                fix="remove __use_yte__ and write the values out; histofuse configs are plain data.",
            )


def load_config(config: dict[str, Any], *, source: str = "config") -> HistofuseConfig:
    """The typed configuration of ``config``, whose defaults are filled in, in place.

    A ConfigError lists every problem with its key path and fix.
    """
    try:
        typed = HistofuseConfig.model_validate(config)
    except ValidationError as err:
        lines = validation_problems(err, HistofuseConfig)
        raise ConfigError(
            f"the configuration is invalid ({len(lines)} problem(s)):\n" + "\n".join(lines),
            path=source,
        ) from None
    config.clear()
    config.update(typed.model_dump(mode="json"))
    return typed


def validate_config(config: dict[str, Any], *, source: str = "config") -> dict[str, Any]:
    """Validate ``config`` against :class:`HistofuseConfig` and fill in its defaults, in place."""
    load_config(config, source=source)
    return config

"""Loading and validating the pipeline configuration and its sample sheets against JSON schemas.

Every error names the file, the key (or row and column) and how to fix it.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from histofuse.errors import ConfigError

log = logging.getLogger(__name__)


def load_schema(path: str | Path) -> dict[str, Any]:
    """Read a YAML JSON-schema file."""
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _extend_with_defaults(validator_class: type[jsonschema.protocols.Validator]) -> type:
    """A validator that fills in schema defaults while it validates (objects only)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Mapping[str, Any], instance: Any, schema: Any) -> Any:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    default = subschema["default"]
                    instance[name] = dict(default) if isinstance(default, dict) else default
                elif subschema.get("type") == "object" and name not in instance and "properties" in subschema:
                    instance[name] = {}
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultingValidator = _extend_with_defaults(jsonschema.Draft7Validator)


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


def _fix_for(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        hints = [
            f"'{key}' -> '{close[0]}'"
            for key in unknown
            if (close := difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6))
        ]
        did_you_mean = f"did you mean {', '.join(hints)}? " if hints else ""
        return f"{did_you_mean}remove or correct the key; allowed keys here are: {', '.join(allowed)}."
    if error.validator == "enum":
        return f"use one of: {', '.join(map(str, error.validator_value))}."
    hint = error.schema.get("description")
    return f"see the comment on this key in config/config.yaml ({hint})." if hint else "see config/config.yaml."


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


def validate_config(config: dict[str, Any], *, schema_path: str | Path, source: str = "config") -> dict[str, Any]:
    """Validate ``config`` in place (filling defaults); raise ConfigError listing every problem."""
    schema = load_schema(schema_path)
    validator = _DefaultingValidator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"  - key '{_key_path(e)}': {e.message}. Fix: {_fix_for(e)}" for e in errors]
        raise ConfigError(
            f"the configuration is invalid ({len(errors)} problem(s)):\n" + "\n".join(lines),
            path=source,
        )
    return config

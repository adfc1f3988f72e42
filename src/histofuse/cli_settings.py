"""Stage commands' settings: the configuration sections they read, as ``--settings`` JSON or options.

The workflow hands each stage the resolved sections it needs as one JSON argument (``--settings``,
shell-quoted by the rule); a user calling a stage by hand can give single keys as options instead
(``--tile-px 128``), or both (the options win). The options, their help and their defaults come
from the models of :mod:`histofuse.configuration`, so no default or bound is declared twice.
"""

from __future__ import annotations

import argparse
import json
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from histofuse.configuration import validation_problems
from histofuse.errors import ConfigError

_NONE_TEXT = frozenset({"", "None", "null"})


@dataclass(frozen=True)
class SettingsGroup:
    """One configuration section a stage reads.

    Attributes:
        section: its key in the configuration (``tiling``, ``features``…).
        model: its model in :mod:`histofuse.configuration`.
        flags: option names where ``--<key>`` would clash (``{"mpp": "--tile-mpp"}``).
        keys: the keys the stage reads (default: every key of the section).
        cli_defaults: defaults for a call by hand that differ from the workflow's, with the reason
            in the option's help (the workflow always passes these keys).
    """

    section: str
    model: type[BaseModel]
    flags: Mapping[str, str] = field(default_factory=dict)
    keys: tuple[str, ...] | None = None
    cli_defaults: Mapping[str, Any] = field(default_factory=dict)

    def fields(self) -> list[str]:
        return list(self.keys if self.keys is not None else self.model.model_fields)

    def flag(self, key: str) -> str:
        return self.flags.get(key, "--" + key.replace("_", "-"))

    def dest(self, key: str) -> str:
        return f"settings:{self.section}.{key}"


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def _is_mapping(annotation: Any) -> bool:
    origins = {typing.get_origin(arg) for arg in typing.get_args(annotation)} | {typing.get_origin(annotation)}
    return dict in origins


def _metavar(key: str, annotation: Any) -> str:
    """The choices of a Literal key (``{otsu,morphological}``), else the key in capitals."""
    inner = typing.get_args(annotation)[0] if _is_list(annotation) else annotation
    choices = [arg for arg in typing.get_args(inner) if arg is not None and typing.get_origin(inner) is typing.Literal]
    return "{" + ",".join(map(str, choices)) + "}" if choices else key.upper()


def add_settings(parser: argparse.ArgumentParser, groups: Sequence[SettingsGroup]) -> None:
    """``--settings`` and one option per key of ``groups``, with the keys' descriptions as help."""
    shape = (
        f"the '{groups[0].section}' section"
        if len(groups) == 1
        else "{" + ", ".join(f'"{group.section}": {{…}}' for group in groups) + "}"
    )
    parser.add_argument(
        "--settings",
        default="{}",
        help=f"resolved settings as JSON: {shape} (the workflow passes them; missing keys take the "
        "defaults below; the options below override single keys)",
    )
    for group in groups:
        options = parser.add_argument_group(f"settings from the configuration's '{group.section}:' section")
        for key in group.fields():
            info = group.model.model_fields[key]
            if _is_mapping(info.annotation):
                continue  # mappings travel in --settings only
            default = group.cli_defaults.get(key, info.get_default(call_default_factory=True))
            note = " (by hand; the workflow passes the configuration's value)" if key in group.cli_defaults else ""
            options.add_argument(
                group.flag(key),
                dest=group.dest(key),
                metavar=_metavar(key, info.annotation),
                default=argparse.SUPPRESS,
                nargs="*" if _is_list(info.annotation) else None,
                help=f"{info.description}; {group.section}.{key}, default {json.dumps(default)}{note}",
            )


def _option_value(text: Any, annotation: Any) -> Any:
    """An option's text as the model reads it: '' / None / null are None where the key allows it."""
    if isinstance(text, list) or type(None) not in typing.get_args(annotation):
        return text
    return None if text in _NONE_TEXT else text


def _given(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--settings is not JSON ({err}).", fix="pass a JSON object (the rules do).") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--settings must be a JSON object, got {text!r}.", fix="pass a JSON object.")
    return value


def _validated(group: SettingsGroup, values: dict[str, Any]) -> BaseModel:
    try:
        return group.model.model_validate(values, strict=False)
    except ValidationError as err:
        lines = validation_problems(err, group.model, keys_file="config/config.yaml", prefix=group.section)
        raise ConfigError("invalid settings:\n" + "\n".join(lines), path="--settings") from None


def settings_from_args(args: argparse.Namespace, groups: Sequence[SettingsGroup]) -> dict[str, BaseModel]:
    """Each group's section: its ``cli_defaults``, then ``--settings``, then the options given."""
    given = _given(args.settings)
    sections: dict[str, BaseModel] = {}
    for group in groups:
        section = given if len(groups) == 1 else given.get(group.section, {})
        values = {**group.cli_defaults, **section}
        for key in group.fields():
            if hasattr(args, group.dest(key)):
                annotation = group.model.model_fields[key].annotation
                values[key] = _option_value(getattr(args, group.dest(key)), annotation)
        sections[group.section] = _validated(group, values)
    return sections

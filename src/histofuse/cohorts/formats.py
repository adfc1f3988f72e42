"""The cohort formats by name: histofuse's own sheets and the published formats' readers."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from histofuse.cohorts.bcnb import read_bcnb
from histofuse.cohorts.generic import read_generic
from histofuse.cohorts.mcat import read_mcat
from histofuse.cohorts.model import CohortTables
from histofuse.cohorts.pathomic import read_pathomic_gbmlgg
from histofuse.errors import ConfigError

READERS: dict[str, Callable[..., CohortTables]] = {
    "pathomic_gbmlgg": read_pathomic_gbmlgg,
    "mcat": read_mcat,
    "bcnb": read_bcnb,
    "generic": read_generic,
}
"""Published format name → reader; the reader's parameters are the paths and options that format takes."""

NATIVE_FORMAT = "histofuse"
"""histofuse's own sheets (samples: and tables: in the config): no options, no reader here."""

FORMATS: tuple[str, ...] = (NATIVE_FORMAT, *READERS)
"""Every value of ``cohort.format``."""


def is_published(format: str) -> bool:
    """Whether ``format`` is read by a published format's reader (else histofuse's own sheets)."""
    _check_known(format)
    return format != NATIVE_FORMAT


def format_parameters(format: str) -> dict[str, bool]:
    """The paths and options a format takes, each with whether it is required (none for histofuse's own)."""
    if not is_published(format):
        return {}
    reader = _reader(format)
    return {
        name: parameter.default is inspect.Parameter.empty for name, parameter in inspect.signature(reader).parameters.items()
    }


def _check_known(format: str) -> None:
    if format not in FORMATS:
        raise ConfigError(
            f"unknown cohort format {format!r}.",
            column="format",
            fix=f"use one of: {', '.join(FORMATS)}.",
        )


def _reader(format: str) -> Callable[..., CohortTables]:
    _check_known(format)
    if format not in READERS:
        raise ConfigError(
            f"the {format!r} format has no reader: its tables are histofuse's own sheets.",
            column="format",
            fix=f"use one of: {', '.join(READERS)}.",
        )
    return READERS[format]


def check_format_options(format: str, options: Any, *, source: str | None = None) -> None:
    """Raise ConfigError for an unknown format, or options it does not take or lacks (before any job)."""
    parameters = format_parameters(format)
    unknown = sorted(set(options) - set(parameters))
    missing = sorted(name for name, required in parameters.items() if required and name not in options)
    if unknown or missing:
        problems = []
        if unknown:
            problems.append(f"unknown option(s) {', '.join(unknown)}")
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        described = ", ".join(f"{name}{'' if required else ' (optional)'}" for name, required in parameters.items())
        if not parameters:
            described = "no options (its files are named under samples: and tables:)"
        raise ConfigError(
            f"format {format!r}: {'; '.join(problems)}.",
            path=source,
            column="cohort.options",
            fix=f"the {format!r} format takes: {described}.",
        )


def read_cohort(format: str, **paths_and_options: Any) -> CohortTables:
    """Read a cohort in the named format; unknown formats and unknown or missing options raise ConfigError."""
    check_format_options(format, paths_and_options)
    return _reader(format)(**paths_and_options)

"""Errors that tell the user which file is wrong, where, and how to fix it."""

from __future__ import annotations

from pathlib import Path


class HistofuseError(Exception):
    """A user-facing error: names the file (and row / column when known) and the fix."""

    def __init__(
        self,
        problem: str,
        *,
        path: str | Path | None = None,
        row: int | str | None = None,
        column: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        self.row = row
        self.column = column
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        where = []
        if self.path is not None:
            where.append(f"file {self.path}")
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        text = (", ".join(where) + ": " if where else "") + self.problem
        if self.fix:
            text += f" Fix: {self.fix}"
        return text


class ConfigError(HistofuseError):
    """The configuration or a sample sheet is invalid."""


class SlideError(HistofuseError):
    """A slide cannot be read or processed."""


class WeightsError(HistofuseError):
    """Encoder or model weights are missing or do not match the architecture."""

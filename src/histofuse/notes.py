"""Warnings about the input, kept for the console and the report.

A reader that changes or leaves out something the user wrote (an id stripped of surrounding
whitespace, the rows of a patient the cohort does not have…) logs a warning naming the file, the
rows and the ids. While the tables are prepared those warnings are collected
(:func:`collect_warnings`) and written to ``tables/notes.tsv`` (one ``note`` per row), which the
report lists; the same checks run when Snakemake builds the DAG, where they reach the console.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from histofuse.errors import HistofuseError
from histofuse.io import atomic_path

NOTES_FILE = "notes.tsv"
"""The file in the tables folder that holds the notes."""


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """Collect the messages of every warning histofuse's loggers emit inside the block."""
    collector = _Collector()
    logger = logging.getLogger("histofuse")
    logger.addHandler(collector)
    try:
        yield collector.messages
    finally:
        logger.removeHandler(collector)


def write_notes(path: Path, notes: Sequence[str]) -> None:
    """``notes`` as a one-column TSV (``note``; header only when there is none)."""
    with atomic_path(Path(path)) as tmp:
        pd.DataFrame({"note": list(notes)}, dtype=str).to_csv(tmp, sep="\t", index=False)


def read_notes(path: Path) -> list[str]:
    """The notes written by :func:`write_notes`; none when the file is absent."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise HistofuseError(f"cannot read the input notes ({exc}).", path=path) from exc
    if "note" not in table.columns:
        raise HistofuseError("required column missing.", path=path, column="note")
    return table["note"].tolist()

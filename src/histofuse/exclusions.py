"""Slides excluded by a per-slide stage under ``on_error: skip``, and the cohort's list of them.

With ``on_error: skip`` a slide that cannot be processed costs that slide only: the failing job
(tiling, feature extraction or import) still writes its outputs, flagged as excluded, instead of
failing. The flag lives in the HDF5 file itself (attributes ``excluded``, ``exclusion_stage``,
``exclusion_file``, ``exclusion_reason``, ``exclusion_fix``; written and read by
:mod:`histofuse.h5layout`), so Snakemake's DAG stays the same whether a slide fails or not, and
every later stage sees the record with the data:

* extraction copies an excluded tiles file's record into an empty features file (no encoder runs);
* :func:`collect_exclusions` lists the records of every features file in ``exclusions.tsv``
  (:data:`EXCLUSIONS_TSV` under the results folder; columns :data:`EXCLUSION_COLUMNS`), after
  checking that every other file was written by the configured encoder;
* training leaves excluded slides out of the patients' bags.

Only problems of the slide itself (:class:`~histofuse.errors.SlideError`) are skipped; an invalid
configuration or unusable encoder weights stop the run whatever ``on_error`` says.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from histofuse import h5layout
from histofuse.errors import ConfigError, HistofuseError
from histofuse.features.feature_files import check_features_encoder
from histofuse.io import atomic_path

log = logging.getLogger(__name__)

EXCLUSIONS_TSV = "exclusions.tsv"
"""The cohort's exclusions, relative to the results folder (``results/exclusions.tsv``)."""
EXCLUSION_COLUMNS: tuple[str, ...] = ("slide", "stage", "reason", "fix", "file")
ON_ERROR_CHOICES: tuple[str, ...] = ("stop", "skip")


@dataclass(frozen=True, kw_only=True)
class Exclusion:
    """Why one slide was left out, by which stage, and how to bring it back."""

    slide: str
    stage: str
    file: str
    reason: str
    fix: str

    @classmethod
    def from_error(cls, err: HistofuseError, *, slide: str, stage: str, file: str | Path) -> Exclusion:
        """The record of ``err`` (its problem and fix; the file it names, else ``file``)."""
        problem = err.problem
        if "Original Traceback" in problem:
            # re-raised from a DataLoader worker: the original message is the traceback's last line
            last = [line for line in problem.splitlines() if line.strip()][-1]
            problem = last.split(": ", 1)[-1]
        return cls(
            slide=slide,
            stage=stage,
            file=str(err.path if err.path is not None else file),
            reason=problem,
            fix=err.fix or "see the job's log.",
        )

    def describe(self) -> str:
        return f"slide {self.slide} excluded at stage {self.stage}: file {self.file}: {self.reason} Fix: {self.fix}"


def check_on_error(value: str) -> str:
    if value not in ON_ERROR_CHOICES:
        raise ConfigError(
            f"unknown on_error value '{value}'.",
            column="on_error",
            fix=f"use one of: {', '.join(ON_ERROR_CHOICES)}.",
        )
    return value


def _record(exclusion: Exclusion) -> dict[str, str]:
    return {name: getattr(exclusion, name) for name in h5layout.EXCLUSION_FIELDS}


def write_excluded_tiles(path: str | Path, exclusion: Exclusion) -> None:
    """A tiles file with no tiles that carries the exclusion record."""
    h5layout.write_excluded_tiles(path, slide=exclusion.slide, record=_record(exclusion))
    log.warning("%s", exclusion.describe())


def write_excluded_features(path: str | Path, exclusion: Exclusion, *, encoder: str) -> None:
    """A features file with no tiles (0 × 0 features) that carries the exclusion record."""
    h5layout.write_excluded_features(path, slide=exclusion.slide, record=_record(exclusion), encoder=encoder)
    log.warning("%s", exclusion.describe())


def read_exclusion(path: str | Path) -> Exclusion | None:
    """The exclusion record of a tiles or features file; ``None`` for a slide that was processed."""
    try:
        found = h5layout.read_exclusion_record(path)
    except OSError as err:
        raise HistofuseError(
            f"cannot read the file ({err}).",
            path=path,
            fix="delete it so that the pipeline rebuilds it.",
        ) from err
    if found is None:
        return None
    slide, record = found
    return Exclusion(slide=slide or Path(path).stem, **record)


def exclusions_frame(exclusions: Iterable[Exclusion]) -> pd.DataFrame:
    rows = [[getattr(e, column) for column in EXCLUSION_COLUMNS] for e in exclusions]
    return pd.DataFrame(rows, columns=list(EXCLUSION_COLUMNS), dtype=str)


def collect_exclusions(feature_files: Iterable[str | Path], out_tsv: str | Path, *, encoder: str) -> pd.DataFrame:
    """List the excluded slides among ``feature_files`` in ``out_tsv`` (header only when none).

    Every other file must have been written by ``encoder``; a file from another encoder stops here,
    before training could mix features of different encoders.
    """
    exclusions = []
    for path in map(Path, feature_files):
        exclusion = read_exclusion(path)
        if exclusion is None:
            check_features_encoder(path, encoder)
        else:
            exclusions.append(exclusion)
    frame = exclusions_frame(exclusions)
    with atomic_path(out_tsv) as tmp:
        frame.to_csv(tmp, sep="\t", index=False)
    if exclusions:
        log.warning("%d slide(s) excluded: %s", len(exclusions), ", ".join(e.slide for e in exclusions))
    else:
        log.info("no slide excluded")
    return frame


def read_exclusions(path: str | Path) -> pd.DataFrame:
    """The rows of an ``exclusions.tsv``."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)

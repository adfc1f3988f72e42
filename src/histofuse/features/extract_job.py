"""One slide's ``extract_features`` job: what it asks for and how it is carried out.

The same :func:`run_extract_job` runs in the job's own process (``features.server: false``), in
the extraction server that serves a machine's or a cluster group job's slides
(:mod:`histofuse.features.server`), and in the cohort benchmark's in-process loop. It imports
nothing heavy itself, so that the client side of a served job starts in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from histofuse.features.encoders import Encoder
    from histofuse.features.extract_settings import ExtractSettings

__all__ = ["EncoderSpec", "ExtractJob", "run_extract_job"]


@dataclass(frozen=True, kw_only=True)
class EncoderSpec:
    """Which encoder a job uses and how its process is set up (what a server is keyed on)."""

    encoder: str
    weights: str | None
    threads: int
    settings: dict[str, Any]
    """:class:`~histofuse.features.extract_settings.ExtractSettings` as plain values."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EncoderSpec:
        return cls(**data)

    def extract_settings(self) -> ExtractSettings:
        from histofuse.features.extract_settings import ExtractSettings

        return ExtractSettings(**self.settings)


@dataclass(frozen=True, kw_only=True)
class ExtractJob:
    """One slide: its file, its tiles, the features file to write."""

    slide: str
    slide_id: str | None
    tiles: str
    out: str
    mpp: float | None
    on_error: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExtractJob:
        return cls(**data)


def run_extract_job(
    job: ExtractJob,
    *,
    encoder_name: str,
    encoder: Callable[[], Encoder],
    settings: ExtractSettings,
    cancelled: Callable[[], bool] | None = None,
) -> str:
    """Write the job's features file; ``"extracted"``, or ``"excluded"`` (by tiling, or by a
    :class:`~histofuse.errors.SlideError` under ``on_error: skip``). ``encoder`` gives the encoder
    (built or cached by the caller) and is not called for a slide tiling excluded."""
    from histofuse.errors import SlideError
    from histofuse.exclusions import Exclusion, check_on_error, read_exclusion, write_excluded_features
    from histofuse.features.extract import extract_slide_features

    check_on_error(job.on_error)
    tiles = Path(job.tiles)
    upstream = read_exclusion(tiles) if tiles.is_file() else None
    if upstream is not None:  # excluded by tiling: carry the record on, no encoder needed
        write_excluded_features(job.out, upstream, encoder=encoder_name)
        return "excluded"
    try:
        extract_slide_features(
            slide_path=job.slide,
            tiles_h5=tiles,
            out_h5=job.out,
            encoder=encoder(),
            settings=settings,
            mpp=job.mpp,
            cancelled=cancelled,
        )
    except SlideError as err:
        if job.on_error != "skip":
            raise
        slide_id = job.slide_id or Path(job.out).stem
        exclusion = Exclusion.from_error(err, slide=slide_id, stage="extract_features", file=job.slide)
        write_excluded_features(job.out, exclusion, encoder=encoder_name)
        return "excluded"
    return "extracted"

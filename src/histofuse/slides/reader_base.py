"""What every slide reader shares: the pyramid description, the reader interface and their helpers.

Both backends (:mod:`histofuse.slides.reader` for OpenSlide, :mod:`histofuse.slides.tiatoolbox_reader`)
import from here, and nothing here imports a backend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

import numpy as np

from histofuse.errors import SlideError

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SlideInfo:
    """What a pipeline stage needs to know about a slide's pyramid."""

    path: str
    width: int
    height: int
    mpp: float
    mpp_source: str
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    vendor: str
    objective_power: float | None = None
    """Magnification of level 0 (e.g. 20.0) as the backend reports it; ``None`` when unknown."""

    def best_level_for_mpp(self, mpp: float) -> int:
        """The coarsest level whose resolution is at least as fine as ``mpp`` (never upsample)."""
        target_downsample = mpp / self.mpp
        best = 0
        for level, downsample in enumerate(self.level_downsamples):
            if downsample <= target_downsample * (1 + 1e-3):
                best = level
        return best


class SlideReader(Protocol):
    """The interface every backend provides."""

    name: str
    info: SlideInfo

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 array (h, w, 3) of ``size`` (w, h) at ``level``, top-left at level-0 ``location``."""
        ...

    def thumbnail_at_mpp(self, mpp: float) -> tuple[np.ndarray, float]:
        """Whole slide at about ``mpp`` µm/px and the image's exact µm/px."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> SlideReader: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


# ------------------------------------------------------------------------------- shared helpers


def thumbnail_at_mpp(reader: SlideReader, mpp: float) -> tuple[np.ndarray, float]:
    """Whole slide at about ``mpp`` µm/px, read from the nearest finer level and resized.

    Returns the RGB image and its exact resolution in µm/px along x. Every backend uses this, so
    a mask depends on the pixels a backend returns, not on how it makes thumbnails.
    """
    from PIL import Image

    info = reader.info
    level = info.best_level_for_mpp(mpp)
    w, h = info.level_dimensions[level]
    image = reader.read_region((0, 0), level, (w, h))
    scale = info.mpp * info.level_downsamples[level] / mpp
    out_w = max(1, int(round(w * scale)))
    out_h = max(1, int(round(h * scale)))
    if (out_w, out_h) != (w, h):
        image = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.Resampling.BILINEAR))
    return image, info.width * info.mpp / out_w


def require_existing(path: Path) -> None:
    """Raise a :class:`SlideError` naming ``path`` when the file is absent."""
    if not path.exists():
        raise SlideError(
            "slide file does not exist.",
            path=path,
            fix="correct the 'path' column of the slides sheet (relative paths are resolved "
            "against the sheet's folder).",
        )


def unreadable_region_error(path: Path, location: tuple[int, int], level: int, err: Exception) -> SlideError:
    """The error for pixels a backend cannot decode (a corrupt or truncated tile inside the file)."""
    first_line = str(err).splitlines()[0] if str(err) else ""
    return SlideError(
        f"cannot read the region at level-0 ({int(location[0])}, {int(location[1])}), pyramid level {level} "
        f"({type(err).__name__}: {first_line}); the file is corrupt or truncated.",
        path=path,
        fix="re-export or re-download the slide, or remove its row from the slides sheet "
        "(with on_error: skip the slide is excluded and the run goes on).",
    )


def missing_mpp_error(path: Path) -> SlideError:
    """The error for a slide whose resolution is neither in the sheet nor in its metadata."""
    return SlideError(
        "the slide's metadata gives no resolution (µm per pixel).",
        path=path,
        fix="add an 'mpp' column to the slides sheet with the level-0 resolution of this "
        "slide (e.g. 0.25 for 40x, 0.5 for 20x scans).",
    )


def positive_or_none(value: object) -> float | None:
    """``value`` as a float when it is a finite positive number, else ``None`` (e.g. an empty cell)."""
    if value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


class ClosingReader:
    """A reader as a context manager: leaving the ``with`` block closes it (subclasses define ``close``)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

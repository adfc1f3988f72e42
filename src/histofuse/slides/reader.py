"""Whole-slide image readers behind one small interface.

``open_slide(path, reader="openslide")`` is the factory; readers are context managers exposing the
level-0 size, the pyramid's downsamples, the level-0 resolution in µm/px and ``read_region``.
OpenSlide is the default backend; ``reader="tiatoolbox"`` selects tiatoolbox's ``WSIReader``
(imported only when that backend is chosen: importing tiatoolbox takes seconds).

Resolution: a positive ``mpp`` given to :func:`open_slide` (the slides sheet's ``mpp`` column) is
authoritative; otherwise the slide's metadata; otherwise a :class:`SlideError` that names the slide
and asks for an ``mpp`` column.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

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


def _mpp_from_tiff_tags(props: dict[str, str]) -> float | None:
    """Resolution from TIFF tags as OpenSlide reports them (``tiff.XResolution`` + unit)."""
    per_unit = positive_or_none(props.get("tiff.XResolution"))
    unit = props.get("tiff.ResolutionUnit", "").lower()
    if per_unit is None:
        return None
    if unit in ("centimeter", "cm", "3"):
        return 1e4 / per_unit
    if unit in ("inch", "2"):
        return 25400.0 / per_unit
    return None


# ----------------------------------------------------------------------------------- OpenSlide


class OpenSlideReader:
    """OpenSlide backend: SVS, generic pyramidal TIFF, NDPI, MRXS, DICOM and more."""

    name = "openslide"

    def __init__(self, path: str | Path, *, mpp: float | None = None) -> None:
        import openslide

        self.path = Path(path)
        require_existing(self.path)
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, OSError, ValueError) as err:
            raise SlideError(
                f"OpenSlide cannot read this slide ({type(err).__name__}: {err}).",
                path=self.path,
                fix="check that the file is a complete, supported whole-slide image (SVS, "
                "pyramidal TIFF, NDPI, MRXS, DICOM…); re-export or re-download it, or remove "
                "its row from the slides sheet.",
            ) from err
        props = dict(self._slide.properties)
        mpp_value, source = self._resolve_mpp(props, mpp)
        self.info = SlideInfo(
            path=str(self.path),
            width=int(self._slide.dimensions[0]),
            height=int(self._slide.dimensions[1]),
            mpp=mpp_value,
            mpp_source=source,
            level_count=int(self._slide.level_count),
            level_dimensions=tuple((int(w), int(h)) for w, h in self._slide.level_dimensions),
            level_downsamples=tuple(float(d) for d in self._slide.level_downsamples),
            vendor=props.get("openslide.vendor", "unknown"),
            objective_power=positive_or_none(props.get("openslide.objective-power")),
        )

    def _resolve_mpp(self, props: dict[str, str], override: float | None) -> tuple[float, str]:
        sheet_mpp = positive_or_none(override)
        if sheet_mpp is not None:
            return sheet_mpp, "sheet"
        for key in ("openslide.mpp-x", "aperio.MPP"):
            parsed = positive_or_none(props.get(key))
            if parsed is not None:
                return parsed, "metadata"
        from_tags = _mpp_from_tiff_tags(props)
        if from_tags is not None:
            return from_tags, "tiff-resolution"
        self._slide.close()
        raise missing_mpp_error(self.path)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        import openslide

        try:
            region = self._slide.read_region((int(location[0]), int(location[1])), level, (int(size[0]), int(size[1])))
        except openslide.OpenSlideError as err:
            raise unreadable_region_error(self.path, location, level, err) from err
        rgba = np.asarray(region)
        rgb = rgba[..., :3].copy()
        # Transparent pixels (outside the scanned area) are background: make them white.
        rgb[rgba[..., 3] == 0] = 255
        return rgb

    def thumbnail_at_mpp(self, mpp: float) -> tuple[np.ndarray, float]:
        """Whole slide at about ``mpp`` µm/px and the image's exact µm/px along x."""
        return thumbnail_at_mpp(self, mpp)

    def close(self) -> None:
        self._slide.close()

    def __enter__(self) -> OpenSlideReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ------------------------------------------------------------------------------------- factory


def _tiatoolbox_reader(path: str | Path, *, mpp: float | None = None) -> SlideReader:
    """tiatoolbox's ``WSIReader`` backend, imported here so that OpenSlide users never pay for it."""
    from histofuse.slides.tiatoolbox_reader import TiatoolboxReader

    return TiatoolboxReader(path, mpp=mpp)


READERS: dict[str, Callable[..., SlideReader]] = {
    "openslide": OpenSlideReader,
    "tiatoolbox": _tiatoolbox_reader,
}


def open_slide(path: str | Path, *, reader: str = "openslide", mpp: float | None = None) -> SlideReader:
    """Open ``path`` with the named backend; a positive ``mpp`` overrides the metadata's resolution."""
    try:
        factory = READERS[reader]
    except KeyError as err:
        raise SlideError(
            f"unknown slide reader '{reader}'.",
            path=path,
            column="reader",
            fix=f"set 'reader' in the config to one of: {', '.join(sorted(READERS))}.",
        ) from err
    return factory(path, mpp=mpp)

"""Whole-slide image readers behind one small interface (:mod:`histofuse.slides.reader_base`).

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
from pathlib import Path

import numpy as np

from histofuse.errors import SlideError
from histofuse.slides.reader_base import (
    ClosingReader,
    SlideInfo,
    SlideReader,
    missing_mpp_error,
    positive_or_none,
    require_existing,
    thumbnail_at_mpp,
    unreadable_region_error,
)

__all__ = ["READERS", "OpenSlideReader", "SlideInfo", "SlideReader", "open_slide"]

log = logging.getLogger(__name__)


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


class OpenSlideReader(ClosingReader):
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

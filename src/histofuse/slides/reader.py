"""Whole-slide image readers behind one small interface.

``open_slide(path, reader="openslide")`` is the factory; readers are context managers exposing the
level-0 size, the pyramid's downsamples, the level-0 resolution in µm/px and ``read_region``.
OpenSlide is the default backend; further backends register themselves in ``READERS``.
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


def _mpp_from_tiff_tags(props: dict[str, str]) -> float | None:
    """Resolution from TIFF tags as OpenSlide reports them (``tiff.XResolution`` + unit)."""
    res = props.get("tiff.XResolution")
    unit = props.get("tiff.ResolutionUnit", "").lower()
    if not res:
        return None
    try:
        per_unit = float(res)
    except ValueError:
        return None
    if per_unit <= 0:
        return None
    if unit in ("centimeter", "cm", "3"):
        return 1e4 / per_unit
    if unit in ("inch", "2"):
        return 25400.0 / per_unit
    return None


class OpenSlideReader:
    """OpenSlide backend: SVS, generic pyramidal TIFF, NDPI, MRXS, DICOM and more."""

    name = "openslide"

    def __init__(self, path: str | Path, *, mpp: float | None = None) -> None:
        import openslide

        self.path = Path(path)
        if not self.path.exists():
            raise SlideError(
                "slide file does not exist.",
                path=self.path,
                fix="correct the 'path' column of the slides sheet (relative paths are resolved "
                "against the sheet's folder).",
            )
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
        )

    def _resolve_mpp(self, props: dict[str, str], override: float | None) -> tuple[float, str]:
        if override is not None and np.isfinite(override) and override > 0:
            return float(override), "sheet"
        for key in ("openslide.mpp-x", "aperio.MPP"):
            value = props.get(key)
            if value:
                try:
                    parsed = float(value)
                except ValueError:
                    continue
                if parsed > 0:
                    return parsed, "metadata"
        from_tags = _mpp_from_tiff_tags(props)
        if from_tags is not None:
            return from_tags, "tiff-resolution"
        self._slide.close()
        raise SlideError(
            "the slide's metadata gives no resolution (µm per pixel).",
            path=self.path,
            fix="add an 'mpp' column to the slides sheet with the level-0 resolution of this "
            "slide (e.g. 0.25 for 40x, 0.5 for 20x scans).",
        )

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        region = self._slide.read_region((int(location[0]), int(location[1])), level, (int(size[0]), int(size[1])))
        rgba = np.asarray(region)
        rgb = rgba[..., :3].copy()
        # Transparent pixels (outside the scanned area) are background: make them white.
        rgb[rgba[..., 3] == 0] = 255
        return rgb

    def thumbnail_at_mpp(self, mpp: float) -> tuple[np.ndarray, float]:
        """Whole slide at about ``mpp`` µm/px (read from the nearest finer level, then resized).

        Returns the RGB image and its exact resolution in µm/px along x.
        """
        from PIL import Image

        level = self.info.best_level_for_mpp(mpp)
        w, h = self.info.level_dimensions[level]
        image = self.read_region((0, 0), level, (w, h))
        scale = self.info.mpp * self.info.level_downsamples[level] / mpp
        out_w = max(1, int(round(w * scale)))
        out_h = max(1, int(round(h * scale)))
        if (out_w, out_h) != (w, h):
            image = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.Resampling.BILINEAR))
        return image, self.info.width * self.info.mpp / out_w

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


READERS: dict[str, Callable[..., SlideReader]] = {"openslide": OpenSlideReader}


def open_slide(path: str | Path, *, reader: str = "openslide", mpp: float | None = None) -> SlideReader:
    """Open ``path`` with the named backend; ``mpp`` overrides the metadata's resolution."""
    try:
        factory = READERS[reader]
    except KeyError as err:
        raise SlideError(
            f"unknown slide reader '{reader}'.",
            fix=f"set 'reader' in the config to one of: {', '.join(sorted(READERS))}.",
        ) from err
    return factory(path, mpp=mpp)

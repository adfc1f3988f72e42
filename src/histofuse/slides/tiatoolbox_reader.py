"""tiatoolbox's ``WSIReader`` behind histofuse's :class:`~histofuse.slides.reader_base.SlideReader` interface.

Selected with ``reader: tiatoolbox``. ``WSIReader.open`` picks tiatoolbox's own backend for the file
(OpenSlide for SVS and most vendor formats, tifffile + zarr for generic pyramidal BigTIFF, wsidicom
for DICOM…). Pixels are read raw (``post_proc=None``) and regions outside the slide are white, as
with the OpenSlide backend, so both backends give the same pixels where they read the same file
the same way.

This module imports tiatoolbox at import time (several seconds); :func:`histofuse.slides.reader.open_slide`
imports it only when this backend is chosen.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tiatoolbox.wsicore.wsireader import WSIReader

from histofuse.errors import SlideError
from histofuse.slides.reader_base import (
    ClosingReader,
    SlideInfo,
    missing_mpp_error,
    positive_or_none,
    require_existing,
    thumbnail_at_mpp,
    unreadable_region_error,
)

log = logging.getLogger(__name__)

_BACKGROUND = 255


class TiatoolboxReader(ClosingReader):
    """tiatoolbox backend: whatever ``WSIReader.open`` reads (SVS, NDPI, generic TIFF, DICOM, OME-TIFF…)."""

    name = "tiatoolbox"

    def __init__(self, path: str | Path, *, mpp: float | None = None) -> None:
        self.path = Path(path)
        require_existing(self.path)
        sheet_mpp = positive_or_none(mpp)
        try:
            self._wsi = WSIReader.open(
                self.path,
                mpp=None if sheet_mpp is None else (sheet_mpp, sheet_mpp),
                post_proc=None,
            )
            meta = self._wsi.info
        # tiatoolbox delegates to OpenSlide, tifffile, zarr, wsidicom…, each with its own error
        # types; any failure here means this file cannot be read as a slide.
        except Exception as err:  # noqa: BLE001
            first_line = str(err).splitlines()[0] if str(err) else ""
            raise SlideError(
                f"tiatoolbox cannot read this slide ({type(err).__name__}: {first_line}).",
                path=self.path,
                fix="check that the file is a complete, supported whole-slide image (SVS, NDPI, "
                "pyramidal TIFF, OME-TIFF, conformant DICOM…); re-export or re-download it, or "
                "remove its row from the slides sheet.",
            ) from err
        if sheet_mpp is not None:
            level0_mpp, source = sheet_mpp, "sheet"
        else:
            metadata_mpp = None if meta.mpp is None else positive_or_none(np.asarray(meta.mpp).ravel()[0])
            if metadata_mpp is None:
                self.close()
                raise missing_mpp_error(self.path)
            level0_mpp, source = metadata_mpp, "metadata"
        width, height = (int(v) for v in meta.slide_dimensions)
        self.info = SlideInfo(
            path=str(self.path),
            width=width,
            height=height,
            mpp=level0_mpp,
            mpp_source=source,
            level_count=int(meta.level_count),
            level_dimensions=tuple((int(w), int(h)) for w, h in meta.level_dimensions),
            level_downsamples=tuple(float(d) for d in meta.level_downsamples),
            vendor=str(meta.vendor or "unknown").lower(),
            objective_power=positive_or_none(meta.objective_power),
        )
        log.debug("%s: opened with tiatoolbox %s", self.path, type(self._wsi).__name__)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3) of ``size`` (w, h) at pyramid ``level``, top-left at level-0 ``location``."""
        try:
            region = self._wsi.read_rect(
                (int(location[0]), int(location[1])),
                (int(size[0]), int(size[1])),
                resolution=int(level),
                units="level",
                coord_space="baseline",
                pad_mode="constant",
                pad_constant_values=_BACKGROUND,
            )
        # the delegate backends (OpenSlide, tifffile + imagecodecs, wsidicom) each raise their own
        # decoding errors; any of them means these pixels cannot be read from the file
        except Exception as err:  # noqa: BLE001
            raise unreadable_region_error(self.path, location, level, err) from err
        return np.ascontiguousarray(np.asarray(region)[..., :3], dtype=np.uint8)

    def thumbnail_at_mpp(self, mpp: float) -> tuple[np.ndarray, float]:
        """Whole slide at about ``mpp`` µm/px and the image's exact µm/px along x."""
        return thumbnail_at_mpp(self, mpp)

    def close(self) -> None:
        closer = getattr(self._wsi, "close", None)
        if callable(closer):
            closer()

"""Tile features computed elsewhere (CLAM, TRIDENT), imported into histofuse's features layout.

With ``features.source: precomputed`` the pipeline skips tissue masks, tiling and extraction; each
slide's file is looked up in ``features.precomputed_dir`` under these names, in this order:

* ``<dir>/<slide_id>.h5`` — a flat folder of files;
* ``<dir>/h5_files/<slide_id>.h5`` — CLAM's ``extract_features_fp.py`` output folder;
* ``<dir>/features_<encoder>/<slide_id>.h5`` — a TRIDENT job folder (``<encoder>`` is
  ``features.encoder``, e.g. ``uni_v1``).

Each file must hold ``features`` (N × D) and ``coords`` (N × 2, level-0 x, y) with finite values.
The import writes ``features`` (float32), ``coords`` (int64, with the source's attributes) and the
attributes training and the report read (``encoder``, ``dim``, ``n_tiles``, ``slide_id``), plus
``source = "precomputed"``, the original path and its sha256; the source file's own attributes are
kept alongside.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from histofuse import __version__, h5layout
from histofuse.errors import ConfigError, SlideError

log = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    """Hex sha256 of a file (hashlib directly: importing the encoders would import torch)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def candidate_paths(folder: str | Path, slide_id: str, encoder: str) -> list[Path]:
    """Where a slide's precomputed features may be, in lookup order (flat, CLAM, TRIDENT)."""
    folder = Path(folder)
    name = f"{slide_id}.h5"
    return [folder / name, folder / "h5_files" / name, folder / f"features_{encoder}" / name]


def check_precomputed_folder(slide_ids: list[str], folder: str | Path, encoder: str, *, on_error: str) -> None:
    """Before any job: every slide has exactly one precomputed file in ``folder``.

    A ConfigError listing the slides without one (or with several) under ``on_error: stop``; under
    ``skip`` a warning, and their import jobs record them as excluded.
    """
    counts = {slide: sum(path.is_file() for path in candidate_paths(folder, slide, encoder)) for slide in slide_ids}
    absent = sorted(slide for slide, n in counts.items() if n == 0)
    several = sorted(slide for slide, n in counts.items() if n > 1)
    parts = [
        f"{what} for {len(slides)} slide(s): {', '.join(slides[:10])}" + (" …" if len(slides) > 10 else "")
        for what, slides in (("no file", absent), ("several files", several))
        if slides
    ]
    if not parts:
        return
    problem = "; ".join(parts)
    tried = ", ".join(str(path.relative_to(folder)) for path in candidate_paths(folder, "{slide}", encoder))
    if on_error == "skip":
        log.warning("%s: %s (looked for: %s); these slides will be excluded", folder, problem, tried)
        return
    raise ConfigError(
        f"precomputed features: {problem} (looked for: {tried}).",
        path=folder,
        column="features.precomputed_dir",
        fix="put each slide's CLAM or TRIDENT .h5 file under one of these names (one per slide), correct "
        "features.precomputed_dir or features.encoder, remove the slides from the slides sheet, or set "
        "on_error: skip to exclude them.",
    )


def find_precomputed_features(folder: str | Path, slide_id: str, encoder: str) -> Path:
    """The one existing candidate file for ``slide_id``; a :class:`SlideError` when none or several exist."""
    candidates = candidate_paths(folder, slide_id, encoder)
    found = [path for path in candidates if path.is_file()]
    tried = ", ".join(str(path.relative_to(folder)) for path in candidates)
    if not found:
        raise SlideError(
            f"no precomputed features for slide '{slide_id}' in the folder (looked for: {tried}).",
            path=folder,
            row=slide_id,
            column="features.precomputed_dir",
            fix="put the slide's CLAM or TRIDENT .h5 file under one of these names (for TRIDENT, "
            "features.encoder must match the features_<encoder> folder), correct "
            "features.precomputed_dir, or remove the slide from the slides sheet.",
        )
    if len(found) > 1:
        raise SlideError(
            f"several precomputed feature files for slide '{slide_id}': {', '.join(map(str, found))}.",
            path=folder,
            row=slide_id,
            column="features.precomputed_dir",
            fix="keep one file per slide under features.precomputed_dir (remove or move the others).",
        )
    return found[0]


def read_precomputed(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any], dict[str, Any]]:
    """Validated ``features`` (N × D float32), ``coords`` (N × 2 int64), file and ``coords`` attributes."""
    path = Path(path)
    fix = (
        "export the slide's features again with CLAM or TRIDENT (datasets 'features' of shape N × D "
        "and 'coords' of shape N × 2 with finite values), or remove the file and the slide."
    )

    def bad(problem: str) -> SlideError:
        return SlideError(problem, path=path, fix=fix)

    try:
        stored = h5layout.read_features_file(path, errors="replace")
    except KeyError as missing:
        raise bad(f"the file has no {' and no '.join(repr(m) for m in missing.args)} dataset.") from None
    except OSError as err:
        raise bad(f"cannot read the file as HDF5 ({err}).") from err
    features, coords, attrs, coords_attrs = stored.features, stored.coords, stored.attrs, stored.coords_attrs
    if features.ndim != 2:
        raise bad(f"'features' must be 2-D (tiles × dims), got shape {features.shape}.")
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise bad(f"'coords' must be 2-D with 2 columns (x, y), got shape {coords.shape}.")
    if features.shape[0] != coords.shape[0]:
        raise bad(f"'features' has {features.shape[0]} rows but 'coords' has {coords.shape[0]}.")
    if not np.issubdtype(features.dtype, np.number) or not np.issubdtype(coords.dtype, np.number):
        raise bad(f"'features' and 'coords' must be numeric (got {features.dtype} and {coords.dtype}).")
    if not np.isfinite(features).all():
        rows = np.flatnonzero(~np.isfinite(features).all(axis=1))
        raise bad(f"'features' has non-finite values (NaN or inf) in {len(rows)} row(s), first: {rows[:5].tolist()}.")
    if not np.isfinite(coords).all() or (coords != np.round(coords)).any():
        raise bad("'coords' must hold finite whole-pixel positions.")
    return features.astype(np.float32), coords.astype(np.int64), attrs, coords_attrs


def _imported_attrs(
    attrs: dict[str, Any], coords_attrs: dict[str, Any], shape: tuple[int, ...], *, slide_id: str, encoder: str
) -> dict[str, Any]:
    """The source's file attributes (less those an import sets), its CLAM/TRIDENT tile sizes, our identity."""
    out = {
        key: value for key, value in attrs.items() if value is not None and key not in h5layout.PRECOMPUTED_OWN_ATTRS
    }
    source_encoder = attrs.get(h5layout.ENCODER)
    if source_encoder is not None and source_encoder != encoder:
        out[h5layout.SOURCE_ENCODER] = source_encoder
    for ours, theirs in h5layout.FROM_CLAM_COORDS_ATTRS:
        if ours not in attrs and theirs in coords_attrs:
            out[ours] = coords_attrs[theirs]
    out[h5layout.SLIDE_ID] = slide_id
    out[h5layout.ENCODER] = encoder
    out[h5layout.DIM] = int(shape[1])
    out[h5layout.N_TILES] = int(shape[0])
    out[h5layout.SOURCE] = "precomputed"
    return out


def import_precomputed_features(*, folder: str | Path, slide_id: str, encoder: str, out_h5: str | Path) -> int:
    """Find, validate and write one slide's precomputed features in histofuse's layout; returns N."""
    source = find_precomputed_features(folder, slide_id, encoder)
    features, coords, attrs, coords_attrs = read_precomputed(source)
    layout = {0: "flat", 1: "clam", 2: "trident"}[candidate_paths(folder, slide_id, encoder).index(source)]
    h5layout.write_features(
        out_h5,
        features=features,
        coords=coords,
        coords_attrs=coords_attrs,
        attrs=_imported_attrs(attrs, coords_attrs, features.shape, slide_id=slide_id, encoder=encoder)
        | {
            h5layout.SOURCE_LAYOUT: layout,
            h5layout.SOURCE_PATH: str(source.resolve()),
            h5layout.SOURCE_SHA256: _sha256(source),
            h5layout.VERSION: __version__,
        },
    )
    log.info("%s: %d × %d precomputed features imported from %s (%s layout)", slide_id, *features.shape, source, layout)
    return int(features.shape[0])

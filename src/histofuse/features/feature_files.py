"""Reading a slide's features file for the stages after extraction, with errors that say how to fix it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from histofuse import h5layout
from histofuse.errors import HistofuseError


def read_features(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``features`` (N × dim float32), ``coords`` (N × 2 int64) and the attributes of a features file."""
    path = Path(path)
    fix = "rerun feature extraction for this slide (delete the file so the pipeline rebuilds it)."
    if not path.is_file():
        raise HistofuseError("features file does not exist.", path=path, fix=fix)
    try:
        return h5layout.read_features(path)
    except (OSError, KeyError) as err:
        raise HistofuseError(f"cannot read the features file ({err}).", path=path, fix=fix) from err


def check_features_encoder(path: str | Path, expected_encoder: str, *, expected_sha256: str | None = None) -> None:
    """Raise :class:`HistofuseError` unless ``path`` was written by ``expected_encoder``.

    With ``expected_sha256`` the encoder's weights must match as well.
    """
    path = Path(path)
    fix = (
        "rerun feature extraction with the configured encoder: delete this features file (or the "
        "features folder) so the pipeline rebuilds it, or set features.encoder back to the encoder used."
    )
    if not path.is_file():
        raise HistofuseError("features file does not exist.", path=path, fix=fix)
    try:
        found_attrs = h5layout.read_feature_attrs(path, h5layout.ENCODER, h5layout.WEIGHTS_SHA256)
    except OSError as err:
        raise HistofuseError(f"cannot read the features file ({err}).", path=path, fix=fix) from err
    found, found_sha = found_attrs[h5layout.ENCODER], found_attrs[h5layout.WEIGHTS_SHA256]
    if found != expected_encoder:
        raise HistofuseError(
            f"features were extracted with encoder '{found}', but '{expected_encoder}' is configured.",
            path=path,
            fix=fix,
        )
    if expected_sha256 is not None and found_sha != expected_sha256:
        raise HistofuseError(
            f"features were extracted with other weights of encoder '{found}' (sha256 {str(found_sha)[:12]}…, "
            f"expected {expected_sha256[:12]}…).",
            path=path,
            fix=fix,
        )

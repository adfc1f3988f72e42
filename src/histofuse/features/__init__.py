"""Tile encoders, per-slide feature extraction and the import of precomputed features.

Names are loaded on first use, so that light users (the workflow looking up precomputed files)
do not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from histofuse.features.encoders import (
        ENCODERS,
        Encoder,
        build_encoder,
        is_known_encoder,
        list_encoders,
        register_encoder,
        sha256_file,
    )
    from histofuse.features.extract import extract_slide_features
    from histofuse.features.extract_settings import ExtractSettings
    from histofuse.features.feature_files import check_features_encoder, read_features
    from histofuse.features.precomputed import (
        candidate_paths,
        find_precomputed_features,
        import_precomputed_features,
    )

_SOURCES = {
    "histofuse.features.encoders": (
        "ENCODERS",
        "Encoder",
        "build_encoder",
        "is_known_encoder",
        "list_encoders",
        "register_encoder",
        "sha256_file",
    ),
    "histofuse.features.extract": ("extract_slide_features",),
    "histofuse.features.extract_settings": ("ExtractSettings",),
    "histofuse.features.feature_files": ("check_features_encoder", "read_features"),
    "histofuse.features.precomputed": (
        "candidate_paths",
        "find_precomputed_features",
        "import_precomputed_features",
    ),
}
_WHERE = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = [
    "ENCODERS",
    "Encoder",
    "ExtractSettings",
    "build_encoder",
    "candidate_paths",
    "check_features_encoder",
    "extract_slide_features",
    "find_precomputed_features",
    "import_precomputed_features",
    "is_known_encoder",
    "list_encoders",
    "read_features",
    "register_encoder",
    "sha256_file",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'histofuse.features' has no attribute '{name}'")
    return getattr(import_module(module), name)

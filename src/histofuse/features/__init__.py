"""Tile encoders and per-slide feature extraction."""

from __future__ import annotations

from histofuse.features.encoders import (
    ENCODERS,
    Encoder,
    build_encoder,
    is_known_encoder,
    list_encoders,
    register_encoder,
    sha256_file,
)
from histofuse.features.extract import (
    ExtractSettings,
    check_features_encoder,
    extract_slide_features,
    read_features,
)

__all__ = [
    "ENCODERS",
    "Encoder",
    "ExtractSettings",
    "build_encoder",
    "check_features_encoder",
    "extract_slide_features",
    "is_known_encoder",
    "list_encoders",
    "read_features",
    "register_encoder",
    "sha256_file",
]

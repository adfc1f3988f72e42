"""Shared test fixtures: paths to the real data beside the project and the repository root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# HISTOFUSE_SHARED points elsewhere where the data travel with the checkout (a GPU node's copy)
SHARED = Path(os.environ.get("HISTOFUSE_SHARED") or REPO.parent / "shared")
SLIDES = SHARED / "data" / "slides"
TILES = SHARED / "data" / "tiles"
TABLES = SHARED / "data" / "tables"


def shared_file(*parts: str) -> Path:
    """A file under ../shared, or skip the test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data folder sits beside the project in this workplace)")
    return path


@pytest.fixture
def repo() -> Path:
    return REPO

"""Atomic outputs: all or nothing, with ordinary file permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from histofuse.io import atomic_path, write_text_atomic


def test_atomic_write_replaces_target_with_umask_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.tsv"
    old = os.umask(0o022)
    try:
        write_text_atomic(target, "a\tb\n")
    finally:
        os.umask(old)
    assert target.read_text() == "a\tb\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["out.tsv"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("complete")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]

"""The benchmarks run (quick mode) and print one JSON line per figure, with a same-run baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_tiling_benchmark_quick_prints_json_figures() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "tiling_coords.py"), "--quick", "--repeats", "1"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    figures = {line["figure"]: line for line in lines}
    assert set(figures) == {"vectorised_s", "naive_loop_s", "speedup_naive_over_vectorised"}
    assert all(line["benchmark"] == "tiling_coords" for line in lines)
    assert figures["vectorised_s"]["tissue_tiles"] >= 4000
    assert figures["speedup_naive_over_vectorised"]["value"] > 0

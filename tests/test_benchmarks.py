"""The benchmarks run (quick mode) and print one JSON line per figure, with a same-run baseline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _figures(script: str, *args: str, timeout: int = 300) -> tuple[list[dict], dict[str, dict]]:
    """Run ``benchmarks/<script>`` with ``args``; its JSON lines and the lines by figure."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return lines, {line["figure"]: line for line in lines}


def test_tiling_benchmark_quick_prints_json_figures() -> None:
    lines, figures = _figures("tiling_coords.py", "--quick", "--repeats", "1")
    assert set(figures) == {"vectorised_s", "naive_loop_s", "speedup_naive_over_vectorised"}
    assert all(line["benchmark"] == "tiling_coords" for line in lines)
    assert figures["vectorised_s"]["tissue_tiles"] >= 4000
    assert figures["speedup_naive_over_vectorised"]["value"] > 0


def test_extract_throughput_quick_cpu_prints_json_figures() -> None:
    lines, figures = _figures(
        "extract_throughput.py", "--quick", "--device", "cpu", "--encoders", "resnet50_trunc", timeout=600
    )
    assert len(lines) == len(figures) == 6
    rates = {"encoder_only", "naive_loader", "histofuse", "histofuse_no_encoder"}
    ratios = {"histofuse_over_encoder_only", "histofuse_over_naive_loader"}
    assert set(figures) == rates | ratios
    for line in lines:
        assert line["benchmark"] == "extract_throughput"
        assert line["encoder"] == "resnet50_trunc"
        assert line["device"] == "cpu" and line["precision"] == "fp32"
        assert isinstance(line["batch_size"], int) and isinstance(line["workers"], int)
        assert line["tiles"] > 0 and line["quick"] is True
        assert isinstance(line["git_revision"], str) and line["git_revision"]
        assert {"python", "torch", "timm", "openslide", "histofuse", "numpy"} <= set(line["versions"])
        assert isinstance(line["value"], float | int) and line["value"] > 0
    assert all(figures[name]["unit"] == "tiles/s" for name in rates)
    assert all(figures[name]["unit"] == "ratio" for name in ratios)
    assert len(figures["histofuse"]["features_sha256"]) == 64


def test_tile_transport_quick_prints_json_figures() -> None:
    lines, figures = _figures("tile_transport.py", "--quick")
    assert len(lines) == len(figures) == 6
    for transport in ("dataloader", "slots"):
        assert figures[f"{transport}_tiles_per_s"]["unit"] == "tiles/s"
        assert figures[f"{transport}_main_cpu_us_per_tile"]["unit"] == "µs/tile"
    ratios = ("slots_over_dataloader_tiles_per_s", "dataloader_over_slots_main_cpu")
    assert all(figures[name]["unit"] == "ratio" for name in ratios)
    for line in lines:
        assert line["benchmark"] == "tile_transport" and line["quick"] is True
        assert line["workers"] == 1 and line["tiles"] > 0
        assert isinstance(line["value"], float | int) and line["value"] > 0
    rate = figures["slots_tiles_per_s"]["value"] / figures["dataloader_tiles_per_s"]["value"]
    assert abs(figures["slots_over_dataloader_tiles_per_s"]["value"] - rate) < 1e-2


def test_tile_resize_quick_prints_json_figures() -> None:
    lines, figures = _figures("tile_resize.py", "--quick")
    per_size = [line for line in lines if "read_px" in line]
    assert {line["read_px"] for line in per_size} == {512, 507, 1024, 257}
    assert len(per_size) == 4 * 5
    for line in per_size:
        assert line["benchmark"] == "tile_resize" and line["threads"] == 1 and line["quick"] is True
        if line["figure"] == "max_grey_level_difference":
            assert line["value"] <= 1  # Pillow's pixels, give or take one grey level when shrinking
        elif line["unit"] in ("tiles/s", "ratio"):
            assert line["value"] > 0
    path = {line["figure"]: line for line in lines if line["figure"].startswith("read_path")}
    assert set(path) == {
        "read_path_pillow_tiles_per_s",
        "read_path_histofuse_tiles_per_s",
        "read_path_histofuse_over_pillow",
    }
    ratio = path["read_path_histofuse_tiles_per_s"]["value"] / path["read_path_pillow_tiles_per_s"]["value"]
    assert abs(path["read_path_histofuse_over_pillow"]["value"] - ratio) < 1e-2
    assert figures["read_path_histofuse_over_pillow"]["slide_mpp"] == 0.25


@pytest.mark.slow
def test_cohort_throughput_quick_prints_json_figures() -> None:
    """Four small slides through the DAG (served, grouped by two) and the in-process loop (minutes)."""
    lines, figures = _figures(
        "cohort_throughput.py", "--quick", "--modes", "served", "grouped", "--group-size", "2", timeout=1200
    )
    assert all(line["benchmark"] == "cohort_throughput" and line["slides"] == 4 for line in lines)
    for mode in ("served", "grouped"):
        assert figures[f"dag_{mode}_tiles_per_s"]["value"] > 0
        assert figures[f"dag_{mode}_over_loop"]["unit"] == "ratio"
        assert figures[f"dag_{mode}_max_feature_difference_vs_loop"]["value"] <= 1e-5
    assert figures["dag_grouped_tiles_per_s"]["group_size"] == 2
    assert figures["loop_tiles_per_s"]["region_decoder_used"] == "tifffile"


def test_gpu_jpeg_agreement_runs_on_the_cpu(tmp_path: Path) -> None:
    """Every stream variant decodes; on the CPU each marked one agrees exactly with libjpeg-turbo's reference."""
    from conftest import shared_file

    svs = shared_file("data", "slides", "cmu_small_region.svs")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_jpeg_agreement.py"), "--device", "cpu", "--tiles", "20",
         "--slide", str(svs), "--pyramid", str(tmp_path / "pyramid.tiff")],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    variants = {(line["slide"], line["page"], line["variant"]) for line in lines}
    assert {("cmu_small_region.svs", 0, v) for v in ("no_marker", "adobe_marker", "component_ids", "both")} <= variants
    assert {("pyramid.tiff", page, "ycbcr") for page in (0, 1, 2)} <= variants
    for line in lines:
        if line["variant"] == "no_marker":  # RGB data taken for YCbCr: the colours are wrong
            assert line["mean"] > 20, line
        else:
            assert line["max"] == 0 and line["share_over_2"] == 0.0, line

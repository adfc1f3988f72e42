"""Feature extraction for a cohort: the real Snakemake DAG against an in-process loop over the same slides.

``--slides`` synthetic JPEG pyramidal slides (``--side`` px at 0.5 µm/px, written as in
``extract_throughput.py``) are tiled by the DAG first (not timed). Then, in one run:

* ``loop``: one Python process that builds the encoder once and extracts every slide in turn with
  the jobs' own code (:func:`histofuse.features.extract_job.run_extract_job`), as CLAM- and
  TRIDENT-style scripts do; timed from the process's start to its end (imports included).
* ``dag_served``: ``snakemake --profile profiles/default`` over the slides' features files,
  every ``extract_features`` job rerun, with ``features.server: true`` (one extraction process
  serves the jobs); timed from Snakemake's start to its end (DAG building included).
* ``dag_per_process``: the same with ``features.server: false`` (each job starts its own process).
* ``dag_grouped``: the slurm profile's grouping run locally: the slides in groups of
  ``slide_features`` (``profiles/slurm``), each group one Snakemake run with its own runtime
  folder, so its own server, as one SLURM group job on its own node would have.

For each DAG mode: tiles/s, the ratio to the loop, and the start-up per job (the job's own time
from its benchmark file, less the loop's time for the same slide). One JSON line per figure.

    python benchmarks/cohort_throughput.py --device cpu --encoder tiny            # a CPU machine
    python benchmarks/cohort_throughput.py --device cuda --encoder resnet50_trunc --workers 15 --batch-size 128
    python benchmarks/cohort_throughput.py --quick                                # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

log = logging.getLogger("cohort_throughput")

BENCHMARK = "cohort_throughput"
ENCODERS = {"tiny": "timm:test_resnet", "resnet50_trunc": "resnet50_trunc"}
"""``tiny``: a test-sized timm ResNet (little work per tile, so start-up shows); random weights."""
MODES = ("served", "per_process", "grouped")


def slurm_group_size() -> int:
    """``slide_features`` group size of ``profiles/slurm`` (the one place it is set)."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    for item in profile.get("group-components", []):
        name, _, size = str(item).partition("=")
        if name == "slide_features":
            return int(size)
    raise SystemExit("profiles/slurm sets no group-components for slide_features")


def write_weights(encoder: str, path: Path) -> None:
    """Seeded random weights for ``encoder``, saved as a state_dict (nothing downloaded)."""
    import torch

    torch.manual_seed(0)
    if encoder == "resnet50_trunc":
        from histofuse.features.encoders import ResNet50Trunk

        model: torch.nn.Module = ResNet50Trunk()
    else:
        import timm

        model = timm.create_model(encoder.partition(":")[2], pretrained=False, num_classes=0)
    torch.save(model.state_dict(), path)


def write_cohort(root: Path, n_slides: int, side: int, *, same_slide: bool = False) -> Path:
    """Slides, sheets and tables under ``root``; the slides sheet. ``same_slide``: one slide written,
    the others links to it (each still tiled and extracted as a slide of its own)."""
    from extract_throughput import write_synthetic_slide
    from histofuse.demo import DemoSpec, make_demo_cohort

    slides_dir = root / "slides"
    slides_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_slides):
        path = slides_dir / f"C{i:04d}.tiff"
        if same_slide and i:
            if not path.exists():
                path.symlink_to(slides_dir / "C0000.tiff")
        elif not path.exists():
            write_synthetic_slide(path, side, seed=i)
        rows.append({"slide_id": path.stem, "patient_id": f"P{i:04d}", "path": f"slides/{path.name}"})
    pd.DataFrame(rows).to_csv(root / "slides.tsv", sep="\t", index=False)
    template = make_demo_cohort(root / "template", DemoSpec(n_patients=4, n_slides=4, min_side_px=512, max_side_px=512, seed=1))
    patients = pd.read_csv(template["patients_sheet"], sep="\t")
    patients = patients.iloc[[i % len(patients) for i in range(n_slides)]].reset_index(drop=True)
    patients["patient_id"] = [row["patient_id"] for row in rows]
    patients.to_csv(root / "patients.tsv", sep="\t", index=False)
    return root / "slides.tsv"


def write_config(root: Path, name: str, features: dict[str, Any]) -> Path:
    config = {
        "results": str(root / "results"),
        "samples": {"slides": str(root / "slides.tsv"), "patients": str(root / "patients.tsv")},
        "tables": {"genomics": None, "gene_groups": None, "clinical": None},
        "tiling": {"mpp": 0.5},
        "features": features,
        # Only extraction runs, but the DAG checks the cohort's folds and labels when it is built:
        # 2 folds of 2 patients, and a task that every patient has a label for.
        "folds": {"k": 2},
        "training": {"tasks": ["grade"]},
    }
    path = root / f"config_{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


SNAKEMAKE_EXTRA: list[str] = []
"""Options added to every Snakemake run (``--snakemake-args``)."""


def snakemake(config: Path, targets: list[str], *, cores: int, env: dict[str, str], extra: tuple[str, ...] = ()) -> float:
    """Seconds of one ``snakemake --profile profiles/default`` run over ``targets``."""
    # targets first: --configfile takes every value after it
    command = [sys.executable, "-m", "snakemake", *targets, "--profile", str(REPO / "profiles" / "default")]
    command += ["--cores", str(cores), *SNAKEMAKE_EXTRA, *extra, "--configfile", str(config)]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed:\n{proc.stderr[-4000:]}")
    return elapsed


def job_seconds(results: Path, encoder: str, slides: list[str]) -> dict[str, float]:
    """Each slide's extract_features job time from its benchmark file (Snakemake's own timing)."""
    folder = results / "benchmarks" / "extract_features" / encoder
    return {slide: float(pd.read_csv(folder / f"{slide}.tsv", sep="\t")["s"].iloc[0]) for slide in slides}


def tiles_of(results: Path, slides: list[str]) -> dict[str, int]:
    out = {}
    for slide in slides:
        with h5py.File(results / "tiles" / f"{slide}.h5", "r") as h5:
            out[slide] = int(h5["coords"].shape[0])
    return out


# ------------------------------------------------------------------------------ the in-process loop


def loop_worker(config_path: Path, out_dir: Path) -> None:
    """Extract every slide of the config in this process (the encoder built once); JSON on stdout."""
    import torch

    from histofuse.features.encoders import build_encoder
    from histofuse.features.extract import ExtractSettings
    from histofuse.features.extract_job import ExtractJob, run_extract_job

    config = yaml.safe_load(config_path.read_text())
    features = config["features"]
    threads = int(features.pop("threads"))
    torch.set_num_threads(threads)
    encoder_name, weights = features.pop("encoder"), features.pop("weights")
    for key in ("server", "server_idle_s"):
        features.pop(key, None)
    settings = ExtractSettings(**features)
    start = time.perf_counter()
    encoder = build_encoder(encoder_name, weights=weights)
    built = time.perf_counter() - start
    sheet = pd.read_csv(config["samples"]["slides"], sep="\t")
    results = Path(config["results"])
    seconds = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for slide_id, path in zip(sheet["slide_id"], sheet["path"], strict=True):
        job = ExtractJob(
            slide=str(Path(config["samples"]["slides"]).parent / path),
            slide_id=slide_id,
            tiles=str(results / "tiles" / f"{slide_id}.h5"),
            out=str(out_dir / f"{slide_id}.h5"),
            mpp=None,
            on_error="stop",
        )
        t0 = time.perf_counter()
        run_extract_job(job, encoder_name=encoder_name, encoder=lambda: encoder, settings=settings)
        seconds[slide_id] = time.perf_counter() - t0
    print(json.dumps({"encoder_built_s": built, "seconds": seconds}))


def run_loop(config: Path, out_dir: Path, env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    command = [sys.executable, __file__, "--loop-worker", str(config), "--loop-out", str(out_dir)]
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the in-process loop failed:\n{proc.stderr[-4000:]}")
    return elapsed, json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------ report


def max_feature_difference(a: Path, b: Path, slides: list[str]) -> float:
    worst = 0.0
    for slide in slides:
        with h5py.File(a / f"{slide}.h5", "r") as fa, h5py.File(b / f"{slide}.h5", "r") as fb:
            worst = max(worst, float(np.abs(fa["features"][()] - fb["features"][()]).max(initial=0.0)))
    return worst


def stop_servers(folder: Path, timeout: float) -> None:
    """Stop the servers under ``folder`` (removing a server's socket stops it) and wait for them."""
    for sock in folder.rglob("*.sock"):
        sock.unlink(missing_ok=True)
    deadline = time.monotonic() + timeout
    for log_file in folder.rglob("*.log"):
        while "exiting" not in log_file.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 slides of 2,048 px: a smoke run")
    parser.add_argument("--slides", type=int, default=None, help="default 8 (quick 4; at least 4, for the folds the DAG checks)")
    parser.add_argument("--side", type=int, default=None, help="slide side in px (default 8192; quick 2048)")
    parser.add_argument("--encoder", default="tiny", choices=sorted(ENCODERS))
    parser.add_argument("--device", default="cpu", help="cpu | cuda (features.device)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="features.num_workers")
    parser.add_argument("--region-decoder", default="auto")
    parser.add_argument("--same-slide", action="store_true", help="write one slide; the others link to it")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--group-size", type=int, default=None, help="default: slide_features of profiles/slurm")
    parser.add_argument("--workdir", type=Path, default=None, help="keep slides and results here (slides reused)")
    parser.add_argument(
        "--snakemake-args", default="", help="options added to every Snakemake run, e.g. '--scheduler greedy'"
    )
    parser.add_argument("--loop-worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--loop-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loop_worker is not None:
        loop_worker(args.loop_worker, args.loop_out)
        return
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    SNAKEMAKE_EXTRA.extend(args.snakemake_args.split())
    n_slides = args.slides or (4 if args.quick else 8)
    side = args.side or (2048 if args.quick else 8192)
    group_size = args.group_size or slurm_group_size()
    with tempfile.TemporaryDirectory(prefix="histofuse-cohort-") as scratch:
        root = args.workdir or Path(scratch)
        run(args, root.resolve(), n_slides=n_slides, side=side, group_size=group_size)


def run(args: argparse.Namespace, root: Path, *, n_slides: int, side: int, group_size: int) -> None:
    from extract_throughput import git_revision, versions

    root.mkdir(parents=True, exist_ok=True)
    write_cohort(root, n_slides, side, same_slide=args.same_slide)
    encoder = ENCODERS[args.encoder]
    weights = root / f"{args.encoder}.pt"
    if not weights.exists():
        write_weights(encoder, weights)
    # one thread per CPU job (as the rule asks on the CPU); the loader workers + 1 on a GPU
    threads = 1 + args.workers if args.device != "cpu" else 1
    features = {
        "encoder": encoder, "weights": str(weights), "device": args.device, "batch_size": args.batch_size,
        "num_workers": args.workers, "region_decoder": args.region_decoder, "server_idle_s": 10,
    }  # fmt: skip
    configs = {server: write_config(root, f"server_{server}", {**features, "server": server}) for server in (True, False)}
    loop_config = write_config(root, "loop", {**features, "threads": threads})
    results = root / "results"
    slides = sorted(pd.read_csv(root / "slides.tsv", sep="\t")["slide_id"])
    # the jobs call `histofuse`: the interpreter's own scripts folder first on PATH
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    tile_targets = [str(results / "tiles" / f"{slide}.h5") for slide in slides]
    snakemake(configs[True], tile_targets, cores=os.cpu_count() or 1, env=env)
    tiles = tiles_of(results, slides)
    total = sum(tiles.values())
    targets = {slide: str(results / "features" / encoder / f"{slide}.h5") for slide in slides}

    loop_wall, loop = run_loop(loop_config, root / "loop_features", env)
    with h5py.File(root / "loop_features" / f"{slides[0]}.h5", "r") as h5:
        decoder_used = str(h5.attrs.get("region_decoder", ""))
    common = {
        "benchmark": BENCHMARK, "encoder": encoder, "device": args.device, "slides": n_slides, "slide_px": side,
        "tiles": total, "batch_size": args.batch_size, "workers": args.workers, "cores": threads,
        "snakemake_args": args.snakemake_args, "region_decoder": args.region_decoder,
        "region_decoder_used": decoder_used, "same_slide": bool(args.same_slide), "quick": bool(args.quick),
        "git_revision": git_revision(),
        "versions": versions(),
    }  # fmt: skip

    def emit(figure: str, value: float, unit: str, **extra: Any) -> None:
        print(json.dumps({**common, "figure": figure, "unit": unit, "value": round(value, 4), **extra}), flush=True)

    loop_rate = total / loop_wall
    emit("loop_tiles_per_s", loop_rate, "tiles/s", wall_s=round(loop_wall, 2))
    emit("loop_startup_s", loop_wall - sum(loop["seconds"].values()), "s", encoder_built_s=round(loop["encoder_built_s"], 2))
    for mode in args.modes:
        runtime = root / f"runtime_{mode}"
        server = mode != "per_process"
        groups = [slides[i : i + group_size] for i in range(0, len(slides), group_size)] if mode == "grouped" else [slides]
        wall = 0.0
        for k, group in enumerate(groups):
            # one runtime folder per group: a group job's own server, as on its own node
            group_env = {**env, "HISTOFUSE_RUNTIME_DIR": str(runtime / f"g{k}")}
            wall += snakemake(configs[server], [targets[s] for s in group], cores=threads, env=group_env,
                              extra=("--forcerun", "extract_features"))  # fmt: skip
        per_job = job_seconds(results, encoder, slides)
        startup = statistics.mean(per_job[s] - loop["seconds"][s] for s in slides)
        rate = total / wall
        extra = {"group_size": group_size} if mode == "grouped" else {}
        emit(f"dag_{mode}_tiles_per_s", rate, "tiles/s", wall_s=round(wall, 2), **extra)
        emit(f"dag_{mode}_over_loop", rate / loop_rate, "ratio", **extra)
        emit(f"dag_{mode}_startup_per_job_s", startup, "s", **extra)
        difference = max_feature_difference(results / "features" / encoder, root / "loop_features", slides)
        emit(f"dag_{mode}_max_feature_difference_vs_loop", difference, "abs")
        stop_servers(runtime, timeout=30)


if __name__ == "__main__":
    main()

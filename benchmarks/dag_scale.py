"""How long Snakemake takes to build the DAG (a dry run) for large cohorts.

Writes a slides sheet of ``--slides`` rows (symlinks to a few small demo slides, one patient per
two slides) and the matching tables, then times ``snakemake -n`` for that sheet and, as the
baseline in the same run, for a sheet a tenth of its size: the seconds until the DAG is built
(Snakemake prints its job table) and the seconds for the whole dry run (which then lists every
job). One JSON line per figure.

    python benchmarks/dag_scale.py                 # 10,000 slides against 1,000
    python benchmarks/dag_scale.py --slides 2000   # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from histofuse.demo import DemoSpec, make_demo_cohort

REPO = Path(__file__).resolve().parents[1]
SOURCE_SLIDES = DemoSpec(n_patients=4, n_slides=4, min_side_px=512, max_side_px=512, seed=1)


def write_cohort(root: Path, source: dict[str, Path], n_slides: int) -> Path:
    """Sheets, tables and a config for ``n_slides`` symlinked slides; returns the config path."""
    root.mkdir(parents=True, exist_ok=True)
    slides_dir = root / "slides"
    slides_dir.mkdir(exist_ok=True)
    originals = sorted((source["slides_sheet"].parent / "slides").glob("*.tiff"))
    n_patients = (n_slides + 1) // 2
    rows = []
    for i in range(n_slides):
        link = slides_dir / f"S{i:06d}.tiff"
        if not link.exists():
            link.symlink_to(originals[i % len(originals)])
        rows.append({"slide_id": link.stem, "patient_id": f"P{i // 2:06d}", "path": f"slides/{link.name}"})
    pd.DataFrame(rows).to_csv(root / "slides.tsv", sep="\t", index=False)
    patients = pd.read_csv(source["patients_sheet"], sep="\t")
    template = patients.iloc[[i % len(patients) for i in range(n_patients)]].reset_index(drop=True)
    template["patient_id"] = [f"P{i:06d}" for i in range(n_patients)]
    template.to_csv(root / "patients.tsv", sep="\t", index=False)
    config = {
        "results": str(root / "results"),
        "samples": {"slides": str(root / "slides.tsv"), "patients": str(root / "patients.tsv")},
        "tables": {"genomics": None, "gene_groups": None, "clinical": None},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def dry_run_seconds(config: Path) -> tuple[float, float, int]:
    """Seconds until the DAG is built (Snakemake's first job table), seconds for the whole dry run, jobs."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.perf_counter()
    dag_built = float("nan")
    lines = []
    with subprocess.Popen(
        [str(Path(sys.executable).parent / "snakemake"), "-n", "--quiet", "rules", "--configfile", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("Job stats:") and dag_built != dag_built:
                dag_built = time.perf_counter() - start
            lines.append(line)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit("".join(lines[-60:]))
    total = [line for line in lines if line.startswith("total")]
    return dag_built, elapsed, int(total[-1].split()[1]) if total else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slides", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = make_demo_cohort(root / "source", SOURCE_SLIDES)
        figures = {}
        for label, n in (("baseline", max(1, args.slides // 10)), ("target", args.slides)):
            dag_s, total_s, jobs = dry_run_seconds(write_cohort(root / label, source, n))
            figures[label] = total_s
            common = {"benchmark": "dag_scale", "slides": n, "jobs": jobs}
            print(json.dumps({**common, "figure": "dag_built_s", "value": round(dag_s, 2)}))
            print(json.dumps({**common, "figure": "dry_run_total_s", "value": round(total_s, 2)}))
        print(
            json.dumps(
                {
                    "benchmark": "dag_scale",
                    "figure": "ratio_target_over_baseline",
                    "slides_ratio": 10,
                    "value": round(figures["target"] / figures["baseline"], 2),
                }
            )
        )


if __name__ == "__main__":
    main()

"""Running the real workflow from tests: a Snakemake subprocess, demo cohorts and their configs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from histofuse.demo import DemoSpec, make_demo_cohort

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY = DemoSpec(n_patients=10, n_slides=11, min_side_px=1024, max_side_px=1280, seed=3)
"""A cohort just big enough for every stage: 10 patients, 11 slides."""


def snakemake(
    *args: str, cwd: Path = REPO, timeout: int = 1500, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the venv's snakemake with ``args`` in ``cwd``; never raises on a failed run.

    As the README runs it: by its path, with the venv left off PATH (jobs must not need it there).
    """
    base_env = os.environ if env is None else env
    env = {**base_env, "PATH": path_without_venv(base_env.get("PATH", ""))}
    return subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def path_without_venv(path: str) -> str:
    """``path`` (a PATH value) without the folder of this interpreter's executables."""
    return os.pathsep.join(p for p in path.split(os.pathsep) if p and Path(p).resolve() != BIN.resolve())


def demo_config(root: Path, cohort: dict[str, Path], **overrides: Any) -> dict[str, Any]:
    """A config for a demo cohort written by :func:`make_demo_cohort`, results under ``root``."""
    config: dict[str, Any] = {
        "results": str(root / "results"),
        "samples": {"slides": str(cohort["slides_sheet"]), "patients": str(cohort["patients_sheet"])},
        "tables": {
            "genomics": str(cohort["genomics"]),
            "gene_groups": str(cohort["gene_groups"]),
            "clinical": str(cohort["clinical"]),
        },
        "tiling": {"mpp": 0.5},
        "features": {"batch_size": 32},
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def make_cohort(root: Path, spec: DemoSpec) -> dict[str, Path]:
    return make_demo_cohort(root / "cohort", spec)


def jobs_run(proc: subprocess.CompletedProcess[str]) -> Counter[str]:
    """How many jobs of each rule a Snakemake run executed, from its log."""
    text = proc.stdout + proc.stderr
    return Counter(re.findall(r"^(?:local)?rule (\w+):$", text, flags=re.M))


def slides_run(proc: subprocess.CompletedProcess[str], rule: str) -> set[str]:
    """The ``slide`` wildcard of every job of ``rule`` that a run executed."""
    text = proc.stdout + proc.stderr
    found: set[str] = set()
    for block in re.split(r"^(?=(?:local)?rule \w+:$)", text, flags=re.M):
        if re.match(rf"(?:local)?rule {rule}:$", block, flags=re.M):
            match = re.search(r"wildcards: .*?slide=([^,\s]+)", block)
            if match:
                found.add(match.group(1))
    return found

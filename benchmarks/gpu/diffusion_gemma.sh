#!/usr/bin/env bash
# GPU version of benchmarks/bench_diffusion_gemma.py: a random DiffusionGemma (hidden 1024, 8 layers, 8 experts,
# a 32k vocabulary, canvases of 32) in bf16, 256 tokens at 24 steps per canvas: emdm's loop (rng=torch) against
# transformers' model.generate on the same seeds (token equality and tokens/s), then emdm's batched decoding.
# One call, a few minutes on an H200 (not run yet: no GPU was lent to the session that wrote it):
#
#   bash benchmarks/gpu/diffusion_gemma.sh                 # writes docs/benchmarks/diffusion_gemma_gpu.md
#   PRETRAINED=/models/diffusiongemma-26B-A4B-it bash benchmarks/gpu/diffusion_gemma.sh   # the real checkpoint
#
# bf16 rounding can make two decoders that agree in fp32 differ on a near-tie; the table says which prompts match.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
"$PY" benchmarks/bench_diffusion_gemma.py --device cuda --dtype bfloat16 --threads 16 \
    ${PRETRAINED:+--pretrained "$PRETRAINED"} --hidden 1024 --layers 8 --vocab 32768 --experts 8 --canvas 32 \
    --gen-length 256 --steps-per-canvas 24 --out docs/benchmarks/diffusion_gemma_gpu.md

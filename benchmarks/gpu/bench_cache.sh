#!/usr/bin/env bash
# GPU version of benchmarks/bench_cache.py: a 1B-class random LLaDA (d_model 2048, 16 layers, LLaDA's 126k vocabulary)
# in bf16, prompt 512, generation 256 in blocks of 32 (Fast-dLLM's GSM8K setting), emdm's cache=none|prefix|dual
# x threshold off / 0.9 against Fast-dLLM's decoders on the same weights. One call, under 10 minutes on an H200:
#
#   bash benchmarks/gpu/bench_cache.sh            # writes docs/benchmarks/cache_gpu.md
#
# Needs ../shared/oracles (the reference code) and a CUDA torch; install with `pip install -e ".[dev]"`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
"$PY" benchmarks/bench_cache.py --device cuda --dtype bfloat16 --threads 16 \
    --d-model 2048 --heads 16 --layers 16 --mlp 5632 \
    --prompts 512 --gen-length 256 --block-length 32 --steps 256 --repeats 2 \
    --out docs/benchmarks/cache_gpu.md

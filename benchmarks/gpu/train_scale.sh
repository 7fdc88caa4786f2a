#!/usr/bin/env bash
# Issue 13 on one GPU, one call under 10 minutes: emdm_train at 1B scale. A Llama-backbone diffusion LM from a config
# (hidden 2048, 16 layers, vocab 32000: ~1.2B parameters, random weights) in bf16, sequence 1024, batch 8:
# full fine-tuning and LoRA, each with and without activation checkpointing, surprise vs uniform masking
# (tokens/s, peak GPU memory), then the same full fine-tune under FSDP (accelerate, one process) from
# emdm_train/recipes/accelerate/fsdp.yaml. Writes docs/benchmarks/train_scale_gpu.md (the table to record).
#
#   pip install -q -e ".[dev]" && bash benchmarks/gpu/train_scale.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WORK=${WORK:-/tmp/train-scale}
mkdir -p "$WORK"
SHAPE=(--device cuda --hidden 2048 --layers 16 --heads 16 --intermediate 5632 --vocab 32000 --seq 1024 --batch 8
       --steps 12)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
rm -f "$WORK/fsdp.jsonl"
# FSDP rows first, from their own process (accelerate launch), collected as JSON lines
"$PY" -m accelerate.commands.launch --config_file emdm_train/recipes/accelerate/fsdp.yaml --num_processes 1 \
    benchmarks/bench_train_scale.py "${SHAPE[@]}" --modes full full+ckpt --rows-out "$WORK/fsdp.jsonl" \
    || echo "FSDP run failed (see above); the table has the single-process rows only"
"$PY" benchmarks/bench_train_scale.py "${SHAPE[@]}" --rows-in $(ls "$WORK"/fsdp.jsonl 2>/dev/null) \
    --out docs/benchmarks/train_scale_gpu.md
cp docs/benchmarks/train_scale_gpu.md "${OUT:-$WORK}/" 2>/dev/null || true

#!/usr/bin/env bash
# Issue 14 on one GPU, one call under 10 minutes: Kim et al.'s Sudoku setting (unstructured stock BERT, the
# paper's decoders), trained and evaluated. Prepare on the CPU first (the data travel with the working tree):
#
#   python -m studies.sudoku.generate --n 20000 --seed 11 --difficulty easy,medium --out gpu_data/base.jsonl \
#       --exclude tasks/sudoku/data/test_easy.jsonl tasks/sudoku/data/test_hard.jsonl
#   python -m studies.sudoku.generate --n 512 --seed 78 --difficulty easy,medium --out gpu_data/val.jsonl \
#       --exclude tasks/sudoku/data/test_easy.jsonl tasks/sudoku/data/test_hard.jsonl gpu_data/base.jsonl
#   (echo /gpu_data/ >> .git/info/exclude)
#
# then, on the device (carry gpu_data; $OUT gets one archive, sudoku_paper_gpu.tgz, to unpack into
# studies/sudoku/results/ and commit: the device returns at most 8 files):
#
#   pip install -q -e ".[dev]" && bash benchmarks/gpu/sudoku_paper.sh gpu_data "$OUT"
#
# Steps: a 30-step throughput probe sets max_steps to fill TRAIN_MINUTES (default 5.5) with the cosine schedule;
# training in bf16 at batch 512; then `python -m studies.sudoku.paper_setting evaluate` (gate: margin at 50 steps
# on 200 easy puzzles; the grid: 1,000 easy + 500 hard x {vanilla, top_prob, margin} x {no noise, paper noise,
# re-masking top-k}) at batch 512 on the GPU. Afterwards, here:
#   tar xzf sudoku_paper_gpu.tgz -C studies/sudoku/results
#   python -m studies.sudoku.paper_setting report --results studies/sudoku/results/paper-gpu/results \
#       --out docs/sudoku/paper-setting.md
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-gpu_data}
DEST=${2:-${OUT:-runs}}
PY=${PYTHON:-python}
MIN=${TRAIN_MINUTES:-5.5}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-paper}            # a dry run on a CPU: SIZE=cpu DEVICE=cpu TRAIN_MINUTES=0.2 PROBE_STEPS=3 GRID_LIMIT=2
PROBE=${PROBE_STEPS:-30}
LIMIT=${GRID_LIMIT:+--limit $GRID_LIMIT}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WORK=${WORK:-/tmp/sudoku-paper-gpu}
OUT="$WORK/paper-gpu"
mkdir -p "$OUT" "$WORK" "$DEST"
(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no GPU") | tee "$OUT/gpu.txt"
"$PY" -m emdm_models.architectures "$WORK/init" --encoder bert --size "$SIZE"
COMMON=(--config studies/sudoku/recipes/sudoku-paper-gpu.yaml --model "$WORK/init" --data "$DATA/base.jsonl"
        --no-progress --report-to none)
# 1. throughput probe
"$PY" -m emdm_train "${COMMON[@]}" --output "$WORK/probe" --max-steps "$PROBE" --log-every "$(( (PROBE + 2) / 3 ))" \
    --eval-every 0 --warmup-steps 1 --max-minutes 2
STEPS=$("$PY" - "$WORK/probe/train_log.jsonl" "$MIN" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
tok_s = recs[-1]["tokens_per_s"]  # the last window: compiled / warmed up
steps = int(float(sys.argv[2]) * 60 * tok_s / (512 * 164))
print(max(10, steps))
PY
)
echo "probe: $STEPS steps fit in $MIN minutes" | tee "$OUT/probe.txt"
# 2. train (the cosine schedule spans STEPS; the time budget is a safety net)
"$PY" -m emdm_train "${COMMON[@]}" --val-data "$DATA/val.jsonl" --output "$WORK/model" --max-steps "$STEPS" \
    --max-minutes "$("$PY" -c "print($MIN + 0.5)")" 2>&1 | tee "$OUT/train.log"
# 3. gate and grid on the GPU
"$PY" -m studies.sudoku.paper_setting evaluate --model "$WORK/model" --out "$OUT/results" --batch-size 512 \
    --device "$DEVICE" $LIMIT
cp "$WORK/model/train_log.jsonl" "$OUT/results/train_log.jsonl"
cat "$OUT/results/gate.json"
tar czf "$DEST/sudoku_paper_gpu.tgz" -C "$WORK" paper-gpu
ls -l "$DEST/sudoku_paper_gpu.tgz"

#!/usr/bin/env bash
# Every GPU check of emdm in one device call (at most 10 minutes), set up from carried wheels, tables into one folder.
#
# The lent machine's python3 has torch 2.11, transformers 5.17, accelerate and peft, but no lm-eval or datasets, and
# it cannot download. So, once, here (PyPI reachable), fetch the missing wheels into .whl/ (ignored by git):
#
#   bash benchmarks/gpu/fetch_wheels.sh
#
# then one call of the device tool:  run(command="bash benchmarks/gpu/run_all.sh", carry=[".whl"], timeout_s=600)
# It installs the wheels into /tmp/site (emdm itself runs from the checkout: no install), then runs, each under its
# own time limit so that one slow check cannot take the others' time:
#   1. benchmarks/accuracy_vs_passes.py on emdm:addition, bf16 (the trained model: accuracy vs forward passes);
#   2. benchmarks/bench_cache.py on a random LLaDA-8B-shaped model (hidden 4096, 32 heads, MLP 12288, vocabulary
#      126464, 4 layers) in bf16: cache none / prefix / dual x threshold, prompt 512, generation 256, blocks of 32;
#   3. benchmarks/bench_cache.py at 1B scale (hidden 2048, 16 layers), the same settings;
#   4. benchmarks/bench_diffusion_gemma.py (a random DiffusionGemma, emdm against transformers' generate).
# Everything is written to $OUT (the device tool returns it) or runs/gpu: env.txt, one .md and .log per check.
#
# Rehearse on a CPU with tiny sizes (the same code path, minutes), best in a Python 3.12 venv holding only what the
# machine has (torch, transformers 5.17, accelerate, peft, numpy, pandas, pyarrow, matplotlib ...), so that the
# carried wheels are what makes it work; EMDM_ORACLES points nowhere, as ../shared does not travel:
#   SMALL=1 PYTHON=/tmp/devenv/bin/python EMDM_ORACLES=/nonexistent bash benchmarks/gpu/run_all.sh /tmp/gpu-rehearsal
set -uo pipefail
cd "$(dirname "$0")/../.."
DEST=${1:-${OUT:-runs/gpu}}
PY=${PYTHON:-python3}
mkdir -p "$DEST"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -z "${NO_INSTALL:-}" ]; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "error: no wheels in .whl/: run 'bash benchmarks/gpu/fetch_wheels.sh' here and carry .whl" >&2; exit 2
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "error: installing the carried wheels failed" >&2; exit 2; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${SMALL:-}" ]; then DEVICE=cpu; DTYPE=float32; else DEVICE=cuda; DTYPE=bfloat16; fi

{ date -u; (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no GPU");
  "$PY" -c "import sys, torch, transformers, lm_eval; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| cuda', torch.version.cuda, '| transformers', transformers.__version__, '| lm-eval', lm_eval.__version__)"; } \
    2>&1 | tee "$DEST/env.txt"

check() {  # check NAME SECONDS COMMAND...: run one check under its own limit; its failure does not stop the rest
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" > "$DEST/$name.log" 2>&1
    local rc=$?
    echo "   exit $rc after $((SECONDS - start))s; tail of $DEST/$name.log:"; tail -n 4 "$DEST/$name.log" | sed 's/^/   /'
}

if [ -n "${SMALL:-}" ]; then
    check accuracy_vs_passes 300 "$PY" benchmarks/accuracy_vs_passes.py --quick --limit 20 --batch-size 10 \
        --device cpu --dtype float32 --threads 2 --out "$DEST/accuracy_vs_passes"
    SHAPE8B=(--d-model 64 --heads 4 --mlp 128 --layers 2 --vocab 1024); SHAPE1B=(--d-model 64 --heads 4 --mlp 128 --layers 2)
    RUN=(--prompts 16 --gen-length 16 --block-length 8 --steps 16 --repeats 1)
    DG=(--hidden 64 --layers 2 --vocab 512 --experts 2 --canvas 8 --gen-length 16 --steps-per-canvas 4)
else
    check accuracy_vs_passes 240 "$PY" benchmarks/accuracy_vs_passes.py --limit 1000 --batch-size 500 \
        --device cuda --dtype bfloat16 --threads 16 --out "$DEST/accuracy_vs_passes"
    SHAPE8B=(--d-model 4096 --heads 32 --mlp 12288 --layers 4 --vocab 126464)
    SHAPE1B=(--d-model 2048 --heads 16 --mlp 5632 --layers 16)
    RUN=(--prompts 512 --gen-length 256 --block-length 32 --steps 256 --repeats 2)
    DG=(--hidden 1024 --layers 8 --vocab 32768 --experts 8 --canvas 32 --gen-length 256 --steps-per-canvas 24)
fi
cp "$DEST/accuracy_vs_passes/results.md" "$DEST/accuracy_vs_passes.md" 2>/dev/null
check cache_llada8b_shape 120 "$PY" benchmarks/bench_cache.py --device "$DEVICE" --dtype "$DTYPE" --threads 16 \
    --no-reference "${SHAPE8B[@]}" "${RUN[@]}" --out "$DEST/cache_llada8b_shape.md"
check cache_1b 100 "$PY" benchmarks/bench_cache.py --device "$DEVICE" --dtype "$DTYPE" --threads 16 \
    "${SHAPE1B[@]}" "${RUN[@]}" --out "$DEST/cache_1b.md"
check diffusion_gemma 90 "$PY" benchmarks/bench_diffusion_gemma.py --device "$DEVICE" --dtype "$DTYPE" --threads 16 \
    "${DG[@]}" --out "$DEST/diffusion_gemma.md"
echo "done: tables in $DEST (env.txt, *.md; logs *.log)"

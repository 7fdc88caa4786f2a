#!/usr/bin/env bash
# Fetch, here, the wheels the lent GPU machine lacks (it has torch, transformers 5.17, accelerate, peft, but no
# lm-eval or datasets, and cannot download) into .whl/, for `run(..., carry=[".whl"])` (see run_all.sh).
# The versions are the ones the CPU test suite runs with. transformers 5.25 replaces the machine's 5.17: on 5.17
# the CPU rehearsal of run_all.sh failed in the cached forward pass and in DiffusionGemma's generate; 5.25 needs
# huggingface_hub 2.x, which needs httpx2 / httpcore2 / truststore (absent there: the rehearsal found that too).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
EXCLUDE=$(git rev-parse --git-path info/exclude)
grep -qx "/.whl/" "$EXCLUDE" 2>/dev/null || echo "/.whl/" >> "$EXCLUDE"
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    lm_eval==0.4.13 datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 pytablewriter==1.2.1 \
    DataProperty==1.1.1 mbstrdecoder==1.1.5 pathvalidate==3.3.1 tabledata==1.3.5 tcolorpy==0.1.7 typepy==1.3.5 \
    chardet==6.0.0.post1 nltk==3.10.4 more-itertools==11.2.1 transformers==5.25.0 huggingface_hub==2.5.0 \
    httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 kernels==0.19.1 tomlkit
# published as source only: build their (pure-Python) wheels here
"$PY" -m pip wheel -q --no-deps -w .whl rouge_score==0.1.2 sqlitedict==2.1.0 word2number==1.1
du -sh .whl

"""The shipped trained model `emdm:addition` (issue 23): it loads by name on the fast path (LLaDA's layout on
Llama layers: every cache mode), and the plain `lm_eval` CLI writes its accuracy and its pass counts."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emdm_models.loading import available_embedded

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif("addition" not in available_embedded(),
                                reason="no embedded addition checkpoint in this build")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


def test_embedded_addition_model_is_on_the_fast_path_and_adds():
    from emdm_sampling import generate, load_denoiser

    den = load_denoiser("emdm:addition")
    assert den.model.config.model_type == "emdm_llama" and den.model.config.attention == "bidirectional"
    assert {"prefix", "dual"} <= set(den.contract.cache_modes)
    assert sum(p.numel() for p in den.model.parameters()) < 5e6  # small enough to ship (<= 20 MB)
    rows = [json.loads(line) for line in (ROOT / "tasks/addition/data/test.jsonl").read_text().splitlines()[:40]]
    prompts = [den.tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
    out = generate(den, prompts, sampler="margin", steps=34, gen_length=34)
    right = sum(den.tokenizer.decode(g).startswith(r["response"]) for r, g in zip(rows, out.generated))
    assert right >= 30, right  # measured: see docs/benchmarks/accuracy-vs-passes.md


@pytest.mark.slow
def test_lm_eval_cli_writes_accuracy_and_pass_counts_for_the_cached_threshold_setting(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "emdm", "--model_args",
                           "pretrained=emdm:addition,cache=dual,threshold=0.9", "--batch_size", "16", "--include_path",
                           str(ROOT / "tasks" / "addition"), "--tasks",
                           "addition_32_chains", "--limit", "16", "--output_path", str(out)],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    got = json.loads(Path(path).read_text())["results"]["addition_32_chains"]
    # measured on 500 items: 48.6% at 1.6 passes (docs/benchmarks/accuracy-vs-passes.md); chains need a 2nd pass
    assert 0.1 <= got["exact_match,none"] <= 0.9 and 0.5 <= got["digit_acc,none"] <= 1
    assert 0 < got["forward_passes_per_item,none"] < 34  # threshold decoding: fewer passes than tokens
    assert got["cached_passes_per_item,none"] > 0  # the dual cache's windowed passes
    assert got["full_passes_per_item,none"] + got["cached_passes_per_item,none"] == \
        pytest.approx(got["forward_passes_per_item,none"])
    assert "forward_passes_per_item" in proc.stdout  # and in the printed table

"""The real CLIs, as users run them: `lm_eval --model emdm` after `pip install .` and `pip install -e .`,
`emdm-eval`, `accelerate launch`, and the errors a user sees.

Each install goes into a fresh venv (no pip, no dependencies installed: a `.pth` path entry lets it see the
running environment's packages, but not that environment's own `.pth` hooks), so the `.pth` hook that makes the
plain `lm_eval` CLI find `emdm` is tested exactly as it is installed from the wheel.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from emdm_eval.registration import PTH_LINE, PTH_NAME  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
# One intra-op thread per process (tiny models; a shared 2-core machine stalls oversubscribed thread pools), and no
# PYTHONPATH: the venvs must find emdm through their own install only.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
ENV.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
           MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
METRICS = {"emdm_demo_gen": ["exact_match,none"], "emdm_demo_mc": ["acc,none", "acc_norm,none"],
           "emdm_demo_ppl": ["word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"]}


def _source_copy(dest: Path) -> Path:
    """The project's files a build needs (building from a copy keeps build/ and *.egg-info out of the tree)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("emdm_core", "emdm_models", "emdm_sampling", "emdm_eval", "emdm_train", "tasks"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, dest / name)
    if not (dest / "README.md").exists():
        (dest / "README.md").write_text("emdm\n")
    return dest


def _make_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    py = path / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if os.path.isdir(p) and p in sys.path]
    # plain path entries (not site dirs): the venv sees the packages, not the running env's .pth hooks
    Path(purelib, "zz_emdm_test_deps.pth").write_text("\n".join(deps) + "\n")
    return py


def _pip(py: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-build-isolation",
                    "-q", *args], check=True, env=ENV, capture_output=True)


@pytest.fixture(scope="session")
def installs(tmp_path_factory):
    """Two venvs: one with the built wheel (`pip install .`), one editable (`pip install -e .`)."""
    root = tmp_path_factory.mktemp("installs")
    src = _source_copy(root / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(root / "dist"), str(src)], check=True, env=ENV, capture_output=True)
    (wheel,) = glob.glob(str(root / "dist" / "emdm-*.whl"))
    wheel_py = _make_venv(root / "venv-wheel")
    _pip(wheel_py, wheel)
    edit_src = _source_copy(root / "src-edit")
    edit_py = _make_venv(root / "venv-edit")
    _pip(edit_py, "-e", str(edit_src))
    return {"wheel": wheel_py, "editable": edit_py, "editable_src": edit_src, "wheel_file": Path(wheel)}


def run(cmd: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def lm_eval(py: Path, model_args: str, tasks: str, out: Path, *extra: str, launcher: list | None = None,
            module: str = "lm_eval") -> subprocess.CompletedProcess:
    cmd = [*(launcher or [py]), "-m", module, "--model", "emdm", "--model_args", model_args, "--tasks", tasks,
           "--output_path", out, *extra]
    return run(cmd, cwd=out.parent)


def results(out: Path) -> dict:
    (path,) = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    return json.loads(Path(path).read_text())


def samples(out: Path) -> dict:
    """(task, doc_id) -> the first response (data-parallel padding may append duplicates after it)."""
    found = {}
    for path in glob.glob(str(out / "**" / "samples_*.jsonl"), recursive=True):
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            found[(Path(path).name.split("_2")[0], row["doc_id"])] = row["resps"][0]
    return found


def check_metrics(res: dict, limit: int) -> None:
    for task, names in METRICS.items():
        got = res["results"][task]
        assert got["sample_len"] == limit
        for name in names:
            assert isinstance(got[name], float), (task, name, got)


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr + proc.stdout).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# --- install and registration ----------------------------------------------------------------------------------

def test_wheel_ships_hook_and_tasks(installs):
    import zipfile

    names = zipfile.ZipFile(installs["wheel_file"]).namelist()
    assert PTH_NAME in names
    assert "emdm_eval/tasks/demo/emdm_demo_mc.yaml" in names and "emdm_eval/tasks/demo/demo_data.py" in names
    assert zipfile.ZipFile(installs["wheel_file"]).read(PTH_NAME).decode() == PTH_LINE
    for kind in ("wheel", "editable"):
        probe = run([installs[kind], "-c",
                     "import sys, sysconfig, pathlib, emdm_eval, emdm_eval.registration as r;"
                     "r.install_hook(); r.install_hook();"  # idempotent: still one hook
                     "print('torch' in sys.modules, 'lm_eval' in sys.modules,"
                     " sum(type(f).__name__ == '_RegistryImportHook' for f in sys.meta_path),"
                     " (pathlib.Path(sysconfig.get_paths()['purelib']) / 'emdm_lm_eval.pth').read_text() == "
                     f"{PTH_LINE!r}, emdm_eval.tasks_dir() is not None)"], cwd=installs["wheel"].parent)
        # the hook is installed at start-up, once, without importing torch or lm_eval
        assert probe.stdout.split() == ["False", "False", "1", "True", "True"], (kind, probe.stderr)


def test_builtin_models_still_resolve_and_hf_runs(installs, tmp_path):
    py = installs["wheel"]
    probe = run([py, "-c", "from lm_eval.api.registry import get_model, model_registry;"
                           "from lm_eval.models import MODEL_MAPPING;"
                           "print(get_model('hf').__name__, get_model('emdm').__name__,"
                           " set(MODEL_MAPPING) <= set(model_registry), len(model_registry) == len(MODEL_MAPPING) + 1)"],
                cwd=tmp_path)
    assert probe.stdout.split() == ["HFLM", "EMDMLM", "True", "True"], probe.stderr
    # the hook survives a registry that fails to import its models: the host program keeps running
    fake = tmp_path / "fake"
    (fake / "lm_eval" / "api").mkdir(parents=True)
    (fake / "lm_eval" / "models").mkdir()
    (fake / "lm_eval" / "__init__.py").write_text("")
    (fake / "lm_eval" / "api" / "__init__.py").write_text("")
    (fake / "lm_eval" / "api" / "registry.py").write_text("model_registry = {}\n")
    (fake / "lm_eval" / "models" / "__init__.py").write_text("raise ImportError('broken install')\n")
    broken = subprocess.run([str(py), "-c", "import lm_eval.api.registry as r; print('alive', r.model_registry)"],
                            cwd=tmp_path, env={**ENV, "PYTHONPATH": str(fake)}, capture_output=True, text=True)
    assert broken.returncode == 0 and "alive {}" in broken.stdout
    assert "could not register the lm-eval model 'emdm'" in broken.stderr

    # a real `--model hf` run in the same environment, on a tiny causal LM
    from transformers import GPT2Config, GPT2LMHeadModel

    from emdm_models.tiny import train_tokenizer

    tok = train_tokenizer()
    gpt = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                               bos_token_id=tok.cls_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(gpt)
    tok.save_pretrained(gpt)
    out = tmp_path / "hf-out"
    proc = run([py, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={gpt}", "--device", "cpu",
                "--tasks", "emdm_demo_mc", "--include_path", ROOT / "tasks", "--limit", "2", "--output_path", out],
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert isinstance(results(out)["results"]["emdm_demo_mc"]["acc,none"], float)


# --- the three request types through the plain CLI -----------------------------------------------------------------

def test_plain_lm_eval_after_pip_install_dot(installs, tiny_checkpoints, tmp_path):
    """`pip install .` then the bare CLI, all three demo tasks on BERT, from an unrelated working directory."""
    py = installs["wheel"]
    tasks = run([py, "-c", "import emdm_eval; print(emdm_eval.tasks_dir())"], cwd=tmp_path).stdout.strip()
    assert "site-packages" in tasks
    out = tmp_path / "out"
    proc = lm_eval(py, f"pretrained={tiny_checkpoints['bert']},steps=4,mc_num=8", "emdm_demo", out,
                   "--include_path", tasks, "--limit", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = results(out)
    check_metrics(res, 5)
    stats = res["config"]["emdm"]["stats"]
    assert stats["generate_until"]["requests"] == 5 and "tokens_per_second" in stats["generate_until"]
    assert stats["loglikelihood"]["requests"] == 20 and stats["loglikelihood_rolling"]["requests"] == 5
    assert "emdm generate_until: 5 requests" in proc.stderr and "empty (nothing left after EOS and the stop strings)" in proc.stderr


def test_emdm_eval_wrapper_finds_its_tasks(installs, tiny_checkpoints, tmp_path):
    """The console script needs neither the hook nor --include_path (ModernBERT this time)."""
    out = tmp_path / "out"
    proc = run([installs["wheel"].parent / "emdm-eval", "--model", "emdm", "--model_args",
                f"pretrained={tiny_checkpoints['modernbert']},sampler=entropy,steps=4,mc_num=4", "--tasks",
                "emdm_demo", "--limit", "3", "--output_path", out], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_metrics(results(out), 3)


def test_editable_install_batch_size_and_processes_do_not_change_results(installs, tiny_checkpoints, tmp_path):
    """LLaDA-style stand-in (remote code, mask id outside the tokenizer), sampled generation: batch size 1 vs 4,
    one process vs two (accelerate launch), same numbers and the same generations."""
    py = installs["editable"]
    args = f"pretrained={tiny_checkpoints['llada']},trust_remote_code=True,steps=4,mc_num=8"
    common = ["--include_path", installs["editable_src"] / "tasks", "--limit", "4", "--log_samples",
              "--gen_kwargs", "temperature=1.0,do_sample=True"]
    runs = {}
    for name, extra, launcher in [
        ("bs1", ["--batch_size", "1"], None),
        ("bs4", ["--batch_size", "4"], None),
        # accelerate itself starts one process for --cpu; emdm re-runs the command as 2 processes (gloo)
        ("dp2", ["--batch_size", "1"], [py, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]),
    ]:
        out = tmp_path / name
        proc = lm_eval(py, args, "emdm_demo", out, *common, *extra, launcher=launcher)
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
        runs[name] = (results(out), samples(out), proc)
    assert "(all 2 processes)" in runs["dp2"][2].stderr and "running 2 CPU processes" in runs["dp2"][2].stderr
    base_res, base_samples, _ = runs["bs1"]
    check_metrics(base_res, 4)
    gens = [v for (task, _), v in base_samples.items() if task == "samples_emdm_demo_gen"]
    assert len(gens) == 4 and len(set(map(str, gens))) > 1
    for name in ("bs4", "dp2"):
        res, smp, _ = runs[name]
        # Per-document values and generations are identical; lm-eval aggregates corpus-level metrics (word
        # perplexity) over documents gathered from the processes, whose summation order can move the last bit.
        # the per-task speed (wall time, passes) is what it cost, not a result: compared apart
        scores, base_scores = _without_speed(res["results"]), _without_speed(base_res["results"])
        assert _same_numbers(scores, base_scores), (name, scores, base_scores)
        assert smp == base_samples, name
    gen, base_gen = runs["bs4"][0]["results"]["emdm_demo_gen"], base_res["results"]["emdm_demo_gen"]
    assert gen["forward_passes_per_item,none"] == base_gen["forward_passes_per_item,none"]  # each row's own passes
    assert gen["generation_seconds,none"] > 0


def _without_speed(results: dict) -> dict:
    from emdm_eval import SPEED_METRICS

    return {task: {k: v for k, v in metrics.items() if k.split(",")[0] not in SPEED_METRICS}
            for task, metrics in results.items()}


def _same_numbers(a, b, rel: float = 1e-12) -> bool:
    """Equal structures whose floats agree to `rel` (everything else exactly)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_numbers(a[k], b[k], rel) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=rel, abs=0)
    return a == b


# --- errors as the user sees them ------------------------------------------------------------------------------

def test_errors_end_with_one_clear_line(installs, tiny_checkpoints, tmp_path):
    py = installs["wheel"]
    bert = tiny_checkpoints["bert"]
    bad_sampler = lm_eval(py, f"pretrained={bert},sampler=nonsense", "emdm_demo_gen", tmp_path / "o1",
                          "--include_path", ROOT / "tasks")
    assert bad_sampler.returncode != 0
    assert last_line(bad_sampler).startswith("error: unknown sampler 'nonsense'; registered samplers: ")

    too_long = lm_eval(py, f"pretrained={bert},steps=4", "emdm_demo_gen", tmp_path / "o2",
                       "--include_path", ROOT / "tasks", "--limit", "1", "--gen_kwargs", "max_gen_toks=124")
    assert too_long.returncode != 0
    assert last_line(too_long).startswith("error: generate_until: prompt of ")
    assert "pass truncation=left" in last_line(too_long)

    missing = run([installs["wheel"].parent / "emdm-eval", "--model", "emdm", "--model_args",
                   f"pretrained={tmp_path / 'no' / 'such'}", "--tasks", "emdm_demo_gen"], cwd=tmp_path)
    assert missing.returncode == 2
    assert last_line(missing) == (f"error: checkpoint directory {tmp_path / 'no' / 'such'} does not exist; pass "
                                  f"pretrained=<a directory written by save_pretrained> or a Hub model id")

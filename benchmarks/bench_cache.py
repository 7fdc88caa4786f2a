"""KV-cache benchmark: emdm's `cache=none|prefix|dual` x threshold on/off x prompt lengths, against Fast-dLLM's own
decoders (`generate`, `generate_with_prefix_cache`, `generate_with_dual_cache` from ../shared/oracles/llada) on the
same random LLaDA checkpoint built from the reference code.

    python benchmarks/bench_cache.py                          # CPU, one thread, prompts 32/256/1024
    python benchmarks/bench_cache.py --device cuda --dtype bfloat16 --d-model 2048 --layers 16 --prompts 512

Runs are interleaved (emdm, reference, emdm, reference, ...) and the median of `--repeats` is reported.
Tokens/s counts generated tokens only (`--gen-length` per row). `same` says whether emdm's tokens equal the
reference's. Prints a Markdown table; `--out FILE` also writes it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ORACLES = Path(os.environ.get("EMDM_ORACLES", ROOT.parent / "shared" / "oracles"))
DECODERS = {"none": "generate", "prefix": "generate_with_prefix_cache", "dual": "generate_with_dual_cache"}


def build_checkpoint(path: Path, args: argparse.Namespace, with_reference: bool) -> Path:
    """A random LLaDA of the requested shape with a tokenizer: the reference layout and code when the reference is
    there (so both sides load the same weights), else emdm's own LLaDA layout (no reference code needed)."""
    from transformers import AutoConfig, AutoModel

    from emdm_models.tiny import DEMO_CORPUS, train_tokenizer

    if not with_reference:
        return build_native_checkpoint(path, args)
    path.mkdir(parents=True, exist_ok=True)
    config = json.loads((ORACLES / "llada" / "tiny_config.json").read_text())
    config.update(d_model=args.d_model, n_heads=args.heads, n_kv_heads=args.heads, n_layers=args.layers,
                  mlp_hidden_size=args.mlp, max_sequence_length=max(args.prompts) + args.gen_length + 8)
    (path / "config.json").write_text(json.dumps(config))
    for code in (ORACLES / "llada").glob("*.py"):
        shutil.copy(code, path)
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.from_pretrained(path, trust_remote_code=True), trust_remote_code=True)
    tok = train_tokenizer(DEMO_CORPUS, with_mask=False)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=args.init_std / p.shape[-1] ** 0.5)
        model.get_output_embeddings().weight[len(tok):] = 0  # predictions stay on the tokenizer's tokens
    model.save_pretrained(path)
    for code in (ORACLES / "llada").glob("*.py"):
        shutil.copy(code, path)
    tok.save_pretrained(path)
    return path


def build_native_checkpoint(path: Path, args: argparse.Namespace) -> Path:
    """The same random LLaDA-layout model built by emdm alone (a fresh clone without ../shared/oracles)."""
    from safetensors.torch import load_file, save_file

    from emdm_models.tiny import DEMO_CORPUS, build_tiny_checkpoint

    build_tiny_checkpoint(path, family="llada", corpus=DEMO_CORPUS, hidden_size=args.d_model, num_layers=args.layers,
                          max_length=max(args.prompts) + args.gen_length + 8)
    config = json.loads((path / "config.json").read_text())
    config.update(n_heads=args.heads, n_kv_heads=args.heads, mlp_hidden_size=args.mlp)
    state = load_file(str(path / "model.safetensors"))
    torch.manual_seed(0)
    for name, weight in list(state.items()):
        if "q_proj" in name or "k_proj" in name or "v_proj" in name:
            state[name] = torch.empty(args.d_model, args.d_model)
        elif name.endswith(("ff_proj.weight", "up_proj.weight")):
            state[name] = torch.empty(args.mlp, args.d_model)
        elif name.endswith("ff_out.weight") and "blocks" in name:
            state[name] = torch.empty(args.d_model, args.mlp)
    if args.vocab:  # LLaDA's 126k vocabulary: the output layer's cost at full size (extra rows never predicted)
        for name in ("model.transformer.wte.weight", "model.transformer.ff_out.weight"):
            state[name] = torch.empty(args.vocab, args.d_model)
        config.update(vocab_size=args.vocab, embedding_size=args.vocab)
    for name, weight in state.items():
        if weight.dim() > 1:
            torch.nn.init.normal_(weight, std=args.init_std / weight.shape[-1] ** 0.5)
    if args.vocab:
        state["model.transformer.ff_out.weight"][config["mask_token_id"] + 1:] = 0
    (path / "config.json").write_text(json.dumps(config))
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def load_decoders():
    spec = importlib.util.spec_from_file_location("fastdllm_generate", ORACLES / "llada" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="an existing LLaDA-layout checkpoint (default: build a random one)")
    ap.add_argument("--prompts", type=int, nargs="+", default=[32, 256, 1024])
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.9], help="thresholds besides 'off'")
    ap.add_argument("--caches", nargs="+", default=["none", "prefix", "dual"])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--mlp", type=int, default=1024)
    ap.add_argument("--vocab", type=int, help="vocabulary rows of the random model built without the reference code "
                    "(e.g. LLaDA's 126464; default: the tiny tokenizer's)")
    ap.add_argument("--init-std", type=float, default=10.0, help="weights ~ N(0, (std / sqrt(fan_in))^2): 10 makes the "
                    "random model confident enough that threshold 0.9 reveals about 3.5 tokens a pass")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-reference", action="store_true", help="emdm only (no Fast-dLLM columns)")
    ap.add_argument("--out", help="also write the table to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from transformers import AutoModel

    from emdm_sampling import generate, load_denoiser

    reference_ok = not args.no_reference and (ORACLES / "llada" / "generate.py").is_file()
    if not args.no_reference and not reference_ok:
        print(f"note: Fast-dLLM's code is not at {ORACLES / 'llada'} (set EMDM_ORACLES to ../shared/oracles of a "
              "checkout that has it): emdm's columns only", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="emdm-bench-cache-"))
    path = Path(args.checkpoint) if args.checkpoint else build_checkpoint(tmp / "llada", args, reference_ok)
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    den = load_denoiser(path, device=device, dtype=dtype)
    reference = decoders = None
    if reference_ok:
        reference = AutoModel.from_pretrained(path, trust_remote_code=True, dtype=dtype).to(device).eval()
        decoders = load_decoders()
    n_params = sum(p.numel() for p in den.model.parameters())
    vocab = len(den.tokenizer)
    shape = den.model.config  # the model measured (--checkpoint's own shape, not the flags')
    what = f"{path}" if args.checkpoint else "random LLaDA (Llama backbone)"
    lines = [f"model: {what} {n_params / 1e6:.1f}M params, hidden {shape.hidden_size}, "
             f"{shape.num_hidden_layers} layers, vocab {den.vocab_size}; {device} {args.dtype}, {torch.get_num_threads()} "
             f"thread(s); gen {args.gen_length}, block {args.block_length}, steps {args.steps}, batch 1, median of "
             f"{args.repeats}", "",
             "| prompt | cache | threshold | emdm tok/s | emdm passes (full+partial) | Fast-dLLM tok/s | "
             "Fast-dLLM passes | emdm / Fast-dLLM | speed-up vs emdm none | cache's own speed-up (same threshold) | "
             "same tokens |", "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    print("\n".join(lines), flush=True)
    g = torch.Generator().manual_seed(0)
    for plen in args.prompts:
        prompt = torch.randint(6, vocab, (plen,), generator=g).tolist()
        base = {}
        for threshold in [None, *args.thresholds]:
            for cache in args.caches:
                kw = dict(sampler="low_confidence_remask", steps=args.steps, gen_length=args.gen_length,
                          block_length=args.block_length, threshold=threshold, cache=cache, temperature=0.0,
                          stop_at_eos=False)
                emdm_times, ref_times = [], []
                out = ref = None
                generate(den, [prompt], **kw)  # warm-up: allocations and kernels before the timed, alternating runs
                for _ in range(args.repeats):
                    out, t = timed(lambda: generate(den, [prompt], **kw), device)
                    emdm_times.append(t)
                    if reference is not None:
                        x = torch.tensor([prompt], device=device)
                        ref, t = timed(lambda: getattr(decoders, DECODERS[cache])(
                            reference, x, steps=args.steps, gen_length=args.gen_length,
                            block_length=args.block_length, temperature=0.0, remasking="low_confidence",
                            mask_id=den.mask_token_id, threshold=threshold), device)
                        ref_times.append(t)
                emdm_tps = args.gen_length / statistics.median(emdm_times)
                if cache == "none":
                    base[threshold] = emdm_tps
                cells = [str(plen), cache, "off" if threshold is None else str(threshold), f"{emdm_tps:.1f}",
                         f"{out.nfe} ({out.nfe_full}+{out.nfe_partial})"]
                if reference is not None:
                    ref_tps = args.gen_length / statistics.median(ref_times)
                    same = ref[0][0].tolist() == out.sequences[0]
                    cells += [f"{ref_tps:.1f}", str(ref[1]), f"{emdm_tps / ref_tps:.2f}x"]
                else:
                    same, cells = None, cells + ["-", "-", "-"]
                own = base.get(threshold)
                cells += [f"{emdm_tps / base[None]:.1f}x" if None in base else "-",
                          f"{emdm_tps / own:.1f}x" if own else "-", "-" if same is None else ("yes" if same else "no")]
                line = "| " + " | ".join(cells) + " |"
                lines.append(line)
                print(line, flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

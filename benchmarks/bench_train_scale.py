"""Training throughput and peak memory of emdm_train: full fine-tuning vs LoRA, with and without activation
checkpointing, uniform vs surprise masking, on a model built from a config (random weights).

    python benchmarks/bench_train_scale.py --out docs/benchmarks/train_scale_cpu.md                      # a small CPU shape
    python benchmarks/bench_train_scale.py --device cuda --hidden 2048 --layers 16 --heads 16 --intermediate 5632 \\
        --vocab 32000 --seq 1024 --batch 8 --steps 12 --out docs/benchmarks/train_scale_gpu.md # 1B class

Each row is one real `emdm_train` run (the Trainer API, the same loop as the CLI): tokens/s over the steps after
the first third (warm-up excluded), peak GPU memory (CUDA) or peak RSS growth (CPU). `--rows-out FILE` appends
the rows as JSON lines (the GPU script collects FSDP rows from a separate `accelerate launch` this way).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = {  # name -> extra emdm_train arguments
    "full": [],
    "full+ckpt": ["--gradient-checkpointing"],
    "lora": ["--lora"],
    "lora+ckpt": ["--lora", "--gradient-checkpointing"],
    "full+surprise": ["--masking", "surprise"],
}


def build_model(root: Path, args: argparse.Namespace) -> Path:
    """A Llama-backbone diffusion LM (emdm_llama) with random weights, and a small tokenizer."""
    import torch

    from emdm_models.backbones import DiffusionLlamaConfig, DiffusionLlamaForMaskedLM
    from emdm_models.tiny import DEMO_CORPUS, train_tokenizer

    path = root / "model"
    tok = train_tokenizer(DEMO_CORPUS, vocab_size=256)
    config = DiffusionLlamaConfig(vocab_size=max(args.vocab, len(tok)), hidden_size=args.hidden,
                                  num_hidden_layers=args.layers, num_attention_heads=args.heads,
                                  num_key_value_heads=args.heads, intermediate_size=args.intermediate,
                                  max_position_embeddings=args.seq, mask_token_id=tok.mask_token_id)
    torch.manual_seed(0)
    DiffusionLlamaForMaskedLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(DEMO_CORPUS * 400))
    return path


def run_mode(model: Path, corpus: Path, mode: str, args: argparse.Namespace, out: Path) -> dict:
    import torch

    from emdm_train.config import parse_args
    from emdm_train.trainer import Trainer

    argv = ["--model", str(model), "--data", str(corpus), "--output", str(out), "--max-steps", str(args.steps),
            "--batch-size", str(args.batch), "--max-length", str(args.seq), "--eval-every", "0", "--save-every", "0",
            "--val-split", "0", "--log-every", str(max(1, args.steps // 3)), "--no-progress", "--report-to", "none",
            "--learning-rate", "1e-4", *MODES[mode]]
    if args.device == "cpu":
        argv.append("--cpu")
    else:
        argv += ["--mixed-precision", "bf16"]
    cuda = args.device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trainer = Trainer(parse_args(argv))
    start = time.perf_counter()
    result = trainer.run()
    wall = time.perf_counter() - start
    logs = [r for r in result.history if "tokens_per_s" in r]
    peak = (torch.cuda.max_memory_allocated() / 2 ** 30 if cuda
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 2 ** 20)
    row = {"mode": mode, "distributed": str(trainer.acc.distributed_type).split(".")[-1],
           "processes": trainer.world, "tokens_per_s": logs[-1]["tokens_per_s"] if logs else None,
           "peak_gib": peak, "peak_kind": "GPU allocated" if cuda else "RSS growth", "wall_s": wall,
           "final_loss": logs[-1]["loss"] if logs else None}
    del trainer
    return row


def table(rows: list[dict], shape: str) -> str:
    base = next((r["tokens_per_s"] for r in rows if r["mode"] == "full" and r["tokens_per_s"]), None)
    lines = [shape, "", "| mode | distributed | processes | tokens/s | vs full | peak memory (GiB) | wall s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['tokens_per_s'] / base:.2f}x" if base and r["tokens_per_s"] else "-"
        lines.append(f"| {r['mode']} | {r['distributed']} | {r['processes']} | {r['tokens_per_s']:,.0f} | {ratio} | "
                     f"{r['peak_gib']:.2f} ({r['peak_kind']}) | {r['wall_s']:.1f} |")
    surprise = next((r for r in rows if r["mode"] == "full+surprise"), None)
    full = next((r for r in rows if r["mode"] == "full"), None)
    if surprise and full and surprise["tokens_per_s"] and full["tokens_per_s"]:
        lines += ["", f"surprise / uniform step time: {full['tokens_per_s'] / surprise['tokens_per_s']:.3f}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=704)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--model", help="reuse a model directory written by an earlier run")
    ap.add_argument("--rows-out", help="append the rows as JSON lines to this file")
    ap.add_argument("--rows-in", nargs="*", default=[], help="JSON-lines files of rows to add to the table")
    ap.add_argument("--out", help="write the Markdown table here")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = Path(args.model) if args.model else build_model(root, args)
        corpus = model.parent / "corpus.txt" if args.model else root / "corpus.txt"
        if not corpus.is_file():
            from emdm_models.tiny import DEMO_CORPUS

            corpus = root / "corpus.txt"
            corpus.write_text("\n".join(DEMO_CORPUS * 400))
        rows = [run_mode(model, corpus, m, args, root / f"run-{m}") for m in args.modes]
    for path in args.rows_in:
        rows += [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    if args.rows_out:
        with open(args.rows_out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    shape = (f"model: emdm_llama, hidden {args.hidden}, {args.layers} layers, {args.heads} heads, vocab {args.vocab}; "
             f"sequence {args.seq}, batch {args.batch}, {args.steps} steps, device {args.device}")
    text = table(rows, shape)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

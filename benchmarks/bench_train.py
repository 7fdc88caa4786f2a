"""Training throughput per masking schedule, on the same model and data, in one run.

A full optimizer step (draw noise, mask, forward, weighted loss, backward, AdamW) is timed for each schedule;
schedules alternate step by step so that drifting machine load hits all of them alike. Reported per schedule:
the median step time and tokens/s, the end-to-end difference to the first schedule (noisy on a loaded machine),
and the time of the masking call alone (noise draw + mask selection), whose difference to the first schedule's,
as a share of its step time, is the direct cost of the schedule ("masking cost"): it is what the 3% budget of
surprise masking is measured against.

    python benchmarks/bench_train.py                         # CPU: BERT-like 2x256, vocab 8192, 8 x 128 tokens
    python benchmarks/bench_train.py --device cuda --batch-size 32 --seq-len 512 --hidden 768 --layers 12
    python benchmarks/bench_train.py --schedules uniform surprise entropy llada

Data are token ids drawn from a Zipf distribution over the vocabulary (so surprise values spread as in text), and
the surprise table is counted from them exactly as the trainer does.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emdm_core.surprise import SurpriseTable  # noqa: E402
from emdm_train.masking import Noise, build_masking, maskable_positions, weighted_mlm_loss_sum  # noqa: E402

PAD, CLS, SEP, MASK = 0, 1, 2, 3


def build_model(vocab: int, hidden: int, layers: int, seq_len: int, device: torch.device) -> torch.nn.Module:
    """A randomly initialised BERT masked LM (dropout on, as in training)."""
    from transformers import BertConfig, BertForMaskedLM

    heads = max(1, hidden // 64)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=4 * hidden, max_position_embeddings=seq_len, pad_token_id=PAD)
    return BertForMaskedLM(cfg).to(device).train()


def zipf_batch(n: int, seq_len: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """[n, seq_len] ids ~ Zipf(1) over the ordinary ids, with [CLS] ... [SEP] around each row."""
    ranks = torch.arange(1, vocab - 3, dtype=torch.float64)
    probs = (1.0 / ranks) / (1.0 / ranks).sum()
    ids = torch.multinomial(probs, n * seq_len, replacement=True, generator=generator).view(n, seq_len) + 4
    ids[:, 0], ids[:, -1] = CLS, SEP
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schedules", nargs="+", default=["uniform", "surprise"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per schedule (interleaved)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.vocab, args.hidden, args.layers, args.seq_len, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    pool = zipf_batch(args.batch_size * 16, args.seq_len, args.vocab, gen)
    table = SurpriseTable.from_token_batches([pool], args.vocab, special_ids=[PAD, CLS, SEP, MASK], progress=False)
    unmaskable = torch.zeros(args.vocab, dtype=torch.bool, device=device)
    unmaskable[[PAD, CLS, SEP, MASK]] = True
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else torch.autocast("cpu", enabled=False))

    def logits_fn(ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast:
            return model(input_ids=ids, attention_mask=attn).logits

    schedules = {}
    for name in args.schedules:
        opts = {"surprise": dict(surprise=table, temperature=args.temperature), "entropy": {}}.get(name, {})
        schedules[name] = build_masking(name, MASK, **opts)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(name: str, i: int) -> tuple[float, float]:
        rows = torch.arange(i * args.batch_size, (i + 1) * args.batch_size) % len(pool)
        ids = pool[rows].to(device, non_blocking=True)
        attn = torch.ones_like(ids)
        sync()
        t0 = time.perf_counter()
        g = torch.Generator(device=device).manual_seed(i)
        noise = Noise.draw(args.batch_size, args.seq_len, generator=g, device=device, stratified=True)
        maskable = maskable_positions(ids, attn, unmaskable)
        mb = schedules[name](ids, maskable, noise=noise, attention_mask=attn,
                             logits_fn=logits_fn if schedules[name].needs_model else None)
        sync()
        t_mask = time.perf_counter() - t0
        with autocast:
            logits = model(input_ids=mb.input_ids, attention_mask=attn).logits
        loss = weighted_mlm_loss_sum(logits, mb.labels, mb.weights) / mb.n_maskable.sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - t0, t_mask

    for name in schedules:  # warm-up
        for i in range(2):
            step(name, i)
    times = {name: [] for name in schedules}
    mask_times = {name: [] for name in schedules}
    i = 0
    for r in range(args.steps):
        order = list(schedules) if r % 2 == 0 else list(reversed(list(schedules)))
        for name in order:
            total, masking = step(name, r)  # the same rows for every schedule
            times[name].append(total)
            mask_times[name].append(masking)

    tokens = args.batch_size * args.seq_len
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"device {device} ({torch.get_num_threads()} threads)" if device.type == "cpu" else f"device {device} "
          f"({torch.cuda.get_device_name(device)}, bf16)")
    print(f"model BERT {args.layers}x{args.hidden}, vocab {args.vocab} ({params:.1f}M params); batch "
          f"{args.batch_size} x {args.seq_len} tokens; {args.steps} interleaved steps per schedule")
    first = args.schedules[0]
    base = statistics.median(times[first])
    base_mask = statistics.median(mask_times[first])
    print(f"{'schedule':10s} {'step ms':>9s} {'tokens/s':>10s} {'vs ' + first:>12s} {'masking ms':>11s} "
          f"{'masking cost':>13s}")
    for name in schedules:
        med = statistics.median(times[name])
        mmed = statistics.median(mask_times[name])
        print(f"{name:10s} {med * 1e3:9.2f} {tokens / med:10,.0f} {100 * (med / base - 1):+11.2f}% "
              f"{mmed * 1e3:11.3f} {100 * (mmed - base_mask) / base:+12.2f}%")


if __name__ == "__main__":
    main()

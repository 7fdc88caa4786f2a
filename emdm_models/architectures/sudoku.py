"""A small bidirectional transformer for Sudoku with row/column/box-aware positions, and its character tokenizer.

Sequence: the 81-character puzzle ('0' = blank), [SEP], then 81 solution cells (masks to be filled); the
tokenizer appends [SEP] to a lone puzzle, so "prompt ids + 81 masks" is the whole input. The layout is read from
the tokens, not from position ids: the first 81 cell tokens (digits or [MASK]) are the puzzle, the next 81 the
solution; [SEP], [PAD] and [EOS] are no cells. So the model works with or without the [SEP] and with left
padding. A row with only 81 cells is the short "canvas" form: one grid, clues visible, blanks masked.
Both halves share the row, column and box embeddings of a cell; a segment embedding tells them apart.

`SudokuConfig.grid_size` (default 9) also allows 4x4 boards (2x2 boxes): 16 cells per grid instead of 81, digits
1-4; the tokenizer is the same.

Layouts (`SudokuConfig.layout`):
* ``fused`` (default): the transformer runs over the 81 cells only; a cell's input is its solution token plus
  its puzzle token (a second embedding table) plus row/column/box. Same information, half the length.
* ``full``: the transformer runs over every token of the sequence (keys: the cells only).

With ``fixed_clues`` (on in new models), a solution cell whose puzzle cell is a clue takes the clue as its input
token and predicts it with certainty, masked or not: no capacity goes into copying clues. With ``peer_attention``
(fused layout), head h attends only within the query cell's row (h % 4 = 0), column (1), box (2) or over every
cell (3): the constraint graph as an inductive bias (on a CPU budget it made the difference: README, "Sudoku").

Logits: cells of the solution half and masked cells get the model's prediction restricted to the digits 1-9;
every other position (given puzzle cells, [SEP], padding) predicts its own token, and a [MASK] past the 162nd
cell (a masked [EOS] in training, extra generation room) predicts [EOS].
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import MaskedLMOutput

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[SEP]", "[MASK]", "[EOS]")
VOCAB = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple("0123456789"))}
PAD_ID, UNK_ID, SEP_ID, MASK_ID, EOS_ID, ZERO_ID = (VOCAB[t] for t in SPECIAL_TOKENS + ("0",))
CELLS = 81  # cells of the default 9x9 board
GRID_SIZES = (4, 9)
NEG = -1e4  # a logit that gives probability 0 in float32 without producing inf/NaN in entropies
SIZES = {
    "cpu": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512),
    "paper": dict(hidden_size=384, num_hidden_layers=3, num_attention_heads=12, intermediate_size=1536),
}


class SudokuConfig(PretrainedConfig):
    """Configuration of `SudokuForMaskedLM` (model_type ``emdm_sudoku``)."""

    model_type = "emdm_sudoku"

    def __init__(self, vocab_size: int = len(VOCAB), hidden_size: int = 128, num_hidden_layers: int = 4,
                 num_attention_heads: int = 4, intermediate_size: int = 512, dropout: float = 0.0,
                 layout: str = "fused", initializer_range: float = 0.02, layer_norm_eps: float = 1e-5,
                 zero_token_id: int = ZERO_ID, mask_token_id: int = MASK_ID, sep_token_id: int = SEP_ID,
                 pad_token_id: int = PAD_ID, eos_token_id: int = EOS_ID, max_position_embeddings: int | None = None,
                 grid_size: int = 9, fixed_clues: bool = False, peer_attention: bool = False, **kwargs) -> None:
        if layout not in ("fused", "full"):
            raise ValueError(f"SudokuConfig.layout must be 'fused' or 'full'; got {layout!r}")
        if grid_size not in GRID_SIZES:
            raise ValueError(f"SudokuConfig.grid_size must be 4 (2x2 boxes) or 9 (3x3 boxes); got {grid_size!r}")
        if peer_attention and layout != "fused":
            raise ValueError("SudokuConfig.peer_attention needs layout='fused' (heads attend over the cells)")
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.dropout = dropout
        self.layout = layout
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.zero_token_id = zero_token_id
        self.mask_token_id = mask_token_id
        self.sep_token_id = sep_token_id
        # True: a solution cell whose puzzle cell is a clue reads that clue and predicts it with certainty (the
        # model spends no capacity on copying, and a masked clue cell is the same input as a revealed one)
        self.fixed_clues = bool(fixed_clues)
        # True: attention head h sees only the cells that share a row (h % 4 == 0), a column (1) or a box (2) with
        # the query cell, or every cell (3): the constraint graph as an inductive bias
        self.peer_attention = bool(peer_attention)
        self.grid_size = grid_size  # board side: 9 (81 cells, 3x3 boxes) or 4 (16 cells, 2x2 boxes)
        # puzzle, [SEP], solution, [EOS]: informational (load_denoiser reads it as the maximum length)
        self.max_position_embeddings = max_position_embeddings or 2 * grid_size * grid_size + 2
        super().__init__(pad_token_id=pad_token_id, eos_token_id=eos_token_id, **kwargs)

    @property
    def noise_token_ids(self) -> list[int]:
        """The ids uniform-state noise may take (`emdm_train --noise uniform`): the digits 1..grid_size, the
        values a cell can hold (any other token in a cell would break the cell layout)."""
        return list(range(self.zero_token_id + 1, self.zero_token_id + self.grid_size + 1))


class SudokuBlock(GradientCheckpointingLayer):
    """Pre-LN transformer block: self-attention then a GELU MLP, both residual (a transformers
    `GradientCheckpointingLayer`: `model.gradient_checkpointing_enable()` recomputes it in the backward pass)."""

    def __init__(self, config: SudokuConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.heads = config.num_attention_heads
        self.dropout = config.dropout
        self.attn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.mlp_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.fc_in = nn.Linear(d, config.intermediate_size)
        self.fc_out = nn.Linear(config.intermediate_size, d)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, D]; keep: bool mask broadcastable to [B, H, L, L] (True = a key to attend to), or None."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        drop = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=drop)
        x = x + F.dropout(self.out(a.transpose(1, 2).reshape(b, n, d)), drop, self.training)
        return x + F.dropout(self.fc_out(F.gelu(self.fc_in(self.mlp_norm(x)))), drop, self.training)


class SudokuForMaskedLM(PreTrainedModel):
    """Bidirectional transformer over Sudoku cells; `forward` returns `MaskedLMOutput(loss, logits [B, L, V])`."""

    config_class = SudokuConfig
    base_model_prefix = "sudoku"
    _no_split_modules = ["SudokuBlock"]
    _supports_sdpa = True
    supports_gradient_checkpointing = True

    def __init__(self, config: SudokuConfig) -> None:
        super().__init__(config)
        d = config.hidden_size
        self.side = int(getattr(config, "grid_size", 9))
        self.box_side = int(round(self.side ** 0.5))
        self.cells = self.side * self.side
        self.token_emb = nn.Embedding(config.vocab_size, d)
        if config.layout == "fused":  # every parameter takes part in each step (DDP needs that)
            self.clue_emb = nn.Embedding(config.vocab_size, d)  # the puzzle token of each cell
        else:
            self.segment_emb = nn.Embedding(3, d)  # puzzle, solution, other
        self.row_emb = nn.Embedding(self.side + 1, d)  # index side (9): not a cell
        self.col_emb = nn.Embedding(self.side + 1, d)
        self.box_emb = nn.Embedding(self.side + 1, d)
        self.blocks = nn.ModuleList(SudokuBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.head = nn.Linear(d, config.vocab_size)
        self._peer_masks: dict[str, torch.Tensor] = {}  # built on first use: no buffer for loading to garble
        self.post_init()

    def peer_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[1, H, cells, cells] bool: head h attends within rows, columns, boxes or everywhere (h % 4 = 0..3)."""
        key = str(device)
        if key not in self._peer_masks:
            self._peer_masks[key] = self._build_peer_mask(self.config.num_attention_heads).to(device)
        return self._peer_masks[key]

    def _build_peer_mask(self, heads: int) -> torch.Tensor:
        cell = torch.arange(self.cells, device="cpu")
        row, col = cell // self.side, cell % self.side
        box = (row // self.box_side) * self.box_side + col // self.box_side
        same = [unit[:, None] == unit[None, :] for unit in (row, col, box)]
        same.append(torch.ones(self.cells, self.cells, dtype=torch.bool, device="cpu"))
        return torch.stack([same[h % 4] for h in range(heads)])[None]

    def layout(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Return (is_cell, segment, cell) [B, L]: segment 0 puzzle / 1 solution / 2 other, cell 0-80 (81: none)."""
        z, m, cells = self.config.zero_token_id, self.config.mask_token_id, self.cells
        is_cell = ((input_ids >= z) & (input_ids <= z + 9)) | (input_ids == m)
        if attention_mask is not None:
            is_cell &= attention_mask.bool()
        rank = is_cell.long().cumsum(1) - 1
        count = is_cell.sum(1, keepdim=True)
        canvas = count == cells
        if not bool((canvas | (count >= 2 * cells)).all()):
            raise ValueError(f"SudokuForMaskedLM expects {cells} or {2 * cells} cell tokens (digits or [MASK]) per "
                             f"row (puzzle [SEP] solution); got {sorted(set(count.flatten().tolist()))}")
        is_cell &= canvas | (rank < 2 * cells)  # a mask past the solution (a masked [EOS]) is no cell
        segment = torch.where(is_cell, torch.where(canvas, 1, rank // cells), 2)
        cell = torch.where(is_cell, rank % cells, cells)
        return is_cell, segment, cell

    def _position(self, cell: torch.Tensor) -> torch.Tensor:
        """Sum of row, column and box embeddings of cell indices (cells = none)."""
        n, k = self.side, self.box_side
        row, col = cell // n, cell % n
        none = cell >= self.cells
        box = torch.where(none, n, (row // k) * k + col // k)
        return self.row_emb(torch.where(none, n, row)) + self.col_emb(torch.where(none, n, col)) + self.box_emb(box)

    def _encode(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Run the blocks and the head: hidden [B, N, D] -> logits [B, N, V]."""
        for block in self.blocks:
            x = block(x, keep)
        return self.head(self.norm(x))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **_) -> MaskedLMOutput:
        """Logits [B, L, V] aligned with input_ids (position_ids are ignored: the layout comes from the tokens)."""
        is_cell, segment, cell = self.layout(input_ids, attention_mask)
        b, n = input_ids.shape[0], self.cells
        slot = torch.where(is_cell, segment * n + cell, 2 * n)  # non-cells land in a spare slot
        grid = input_ids.new_full((b, 2 * n + 1), self.config.pad_token_id).scatter(1, slot, input_ids)
        z = self.config.zero_token_id
        puzzle = grid[:, :n]  # the puzzle token of each cell ([PAD] in the canvas form)
        fixed = (puzzle > z) & (puzzle <= z + self.side) & self.config.fixed_clues  # [B, n]: clue cells to copy
        index = cell.clamp(max=n - 1)
        clue = puzzle.gather(1, index)  # [B, L]: the puzzle token of each position's cell
        given = fixed.gather(1, index) & (segment == 1)  # solution positions whose cell is a fixed clue
        if self.config.layout == "full":
            tokens = torch.where(given, clue, input_ids)
            x = self.token_emb(tokens) + self.segment_emb(segment) + self._position(cell)
            pred = self._encode(x, is_cell[:, None, None, :])  # attend to cells only: [SEP] and padding are inert
        else:
            solution = torch.where(fixed, puzzle, grid[:, n:2 * n])
            cells = torch.arange(n, device=input_ids.device)
            x = self.token_emb(solution) + self.clue_emb(puzzle) + self._position(cells)
            keep = self.peer_mask(input_ids.device) if self.config.peer_attention else None
            pred = self._encode(x, keep).gather(1, index[..., None].expand(-1, -1, self.config.vocab_size))
        vocab = torch.arange(self.config.vocab_size, device=pred.device)
        pred = pred.masked_fill((vocab <= z) | (vocab > z + self.side), NEG)  # cells take the digits 1-n only
        masked = input_ids == self.config.mask_token_id
        tail = masked & ~is_cell  # the sequence ends after the solution: a mask there is [EOS]
        target = torch.where(tail, self.config.eos_token_id, torch.where(given, clue, input_ids))
        own = torch.full_like(pred, NEG).scatter(-1, target[..., None], 0.0)
        use_model = ((segment == 1) | (masked & is_cell)) & ~given
        logits = torch.where(use_model[..., None], pred, own)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits)


def build_sudoku_tokenizer(model_max_length: int = 2 * CELLS + 2):
    """Character-level `PreTrainedTokenizerFast`: digits are single tokens, whitespace is dropped.

    ``tok(puzzle)`` gives the 81 cells then [SEP] (the post-processor appends it); with
    ``add_special_tokens=False`` exactly the 81 cells. ``decode`` joins tokens without spaces.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token="[UNK]"))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Split(Regex("."), behavior="isolated")])
    tok.post_processor = processors.TemplateProcessing(single="$A [SEP]", pair="$A [SEP] $B:1",
                                                       special_tokens=[("[SEP]", SEP_ID)])
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", sep_token="[SEP]",
                                   mask_token="[MASK]", eos_token="[EOS]", model_max_length=model_max_length)


def save_sudoku_model_dir(path: str | Path, size: str = "cpu", seed: int = 0, **overrides) -> Path:
    """Write a randomly initialised model (config, safetensors weights) and the tokenizer to path; return it.

    `size` is ``cpu`` (about 0.8M parameters) or ``paper`` (3 layers, width 384, 12 heads: about 5.3M);
    `overrides` replace config fields (e.g. ``num_hidden_layers=6``, ``layout="full"``, ``grid_size=4``,
    ``fixed_clues=False``: the model learns to copy the clues itself, as the paper's does).
    """
    if size not in SIZES:
        raise ValueError(f"unknown Sudoku model size {size!r}; choose one of {', '.join(SIZES)}")
    config = SudokuConfig(**{**SIZES[size], "fixed_clues": True, **overrides})
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = SudokuForMaskedLM(config)
    model.save_pretrained(path)
    build_sudoku_tokenizer(config.max_position_embeddings).save_pretrained(path)
    return path


ENCODER_SIZES = {
    "paper": dict(hidden_size=384, num_hidden_layers=3, num_attention_heads=12, intermediate_size=1536),
    "cpu": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512),
}


def sudoku_encoder_config(encoder: str = "bert", size: str = "paper", grid_size: int = 9, dropout: float = 0.1,
                          **overrides) -> PretrainedConfig:
    """A stock transformers encoder config for unstructured Sudoku (Kim et al.'s setting): no row/column/box
    knowledge, positions only (BERT: learned absolute; ModernBERT: rotary), the full vocabulary of the Sudoku
    tokenizer at every position, puzzle [SEP] solution [EOS] as one sequence (164 tokens for 9x9)."""
    if size not in ENCODER_SIZES:
        raise ValueError(f"unknown encoder size {size!r}; choose one of {', '.join(ENCODER_SIZES)}")
    if grid_size not in GRID_SIZES:
        raise ValueError(f"grid_size must be one of {GRID_SIZES} (got {grid_size})")
    common = {**ENCODER_SIZES[size], "vocab_size": len(VOCAB), "max_position_embeddings": 2 * grid_size ** 2 + 2,
              "pad_token_id": PAD_ID}
    if encoder == "bert":
        from transformers import BertConfig

        return BertConfig(**{**common, "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout,
                             "type_vocab_size": 1, **overrides})
    if encoder == "modernbert":
        from transformers import ModernBertConfig

        return ModernBertConfig(**{**common, "embedding_dropout": dropout, "attention_dropout": dropout,
                                   "mlp_dropout": dropout, "global_attn_every_n_layers": 1, "bos_token_id": SEP_ID,
                                   "eos_token_id": EOS_ID, "cls_token_id": SEP_ID, "sep_token_id": SEP_ID,
                                   **overrides})
    raise ValueError(f"unknown encoder {encoder!r}; choose bert or modernbert")


def save_sudoku_encoder_dir(path: str | Path, encoder: str = "bert", size: str = "paper", grid_size: int = 9,
                            seed: int = 0, **overrides) -> Path:
    """Write a randomly initialised stock encoder (`sudoku_encoder_config`) and the Sudoku tokenizer to path."""
    from transformers import AutoModelForMaskedLM

    config = sudoku_encoder_config(encoder, size, grid_size, **overrides)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    AutoModelForMaskedLM.from_config(config).save_pretrained(path)
    build_sudoku_tokenizer(config.max_position_embeddings).save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> None:
    """CLI: write a randomly initialised Sudoku model directory (for `emdm_train --model DIR --from-scratch`)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m emdm_models.architectures", description=main.__doc__)
    ap.add_argument("out", help="directory to write (config.json, model.safetensors, tokenizer)")
    ap.add_argument("--size", default="cpu", choices=sorted(SIZES))
    ap.add_argument("--layout", default="fused", choices=["fused", "full"])
    ap.add_argument("--layers", type=int, help="num_hidden_layers (default: the size's)")
    ap.add_argument("--hidden", type=int, help="hidden_size (default: the size's; intermediate is 4x)")
    ap.add_argument("--heads", type=int, help="num_attention_heads (default: the size's)")
    ap.add_argument("--grid-size", type=int, default=9, choices=GRID_SIZES,
                    help="board side: 9 (3x3 boxes) or 4 (2x2 boxes, 16 cells)")
    ap.add_argument("--peer-attention", action="store_true",
                    help="heads attend within rows / columns / boxes / everywhere (fused layout only)")
    ap.add_argument("--no-fixed-clues", dest="fixed_clues", action="store_false",
                    help="let the model predict the clue cells of the solution (default: they are fixed to the clue)")
    ap.add_argument("--encoder", choices=["bert", "modernbert"],
                    help="write a stock transformers encoder instead (unstructured: no row/column/box knowledge, "
                         "full vocabulary, clues predicted like any cell; Kim et al.'s setting); --size paper|cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.encoder:
        if args.size not in ENCODER_SIZES:
            ap.error(f"--encoder takes --size {' or '.join(ENCODER_SIZES)}")
        over = {k: v for k, v in (("num_hidden_layers", args.layers), ("num_attention_heads", args.heads)) if v}
        if args.hidden:
            over.update(hidden_size=args.hidden, intermediate_size=4 * args.hidden)
        path = save_sudoku_encoder_dir(args.out, args.encoder, args.size, args.grid_size, args.seed, **over)
        print(f"wrote {path} ({args.encoder}, {args.size}, {args.grid_size}x{args.grid_size})")
        return
    over: dict = {"layout": args.layout, "fixed_clues": args.fixed_clues}
    if args.peer_attention:
        over["peer_attention"] = True
    if args.grid_size != 9:
        over["grid_size"] = args.grid_size
    if args.layers:
        over["num_hidden_layers"] = args.layers
    if args.hidden:
        over.update(hidden_size=args.hidden, intermediate_size=4 * args.hidden)
    if args.heads:
        over["num_attention_heads"] = args.heads
    try:
        path = save_sudoku_model_dir(args.out, args.size, args.seed, **over)
    except (ValueError, OSError) as err:
        raise SystemExit(f"error: {err}")
    n = sum(p.numel() for p in SudokuForMaskedLM.from_pretrained(path).parameters())
    print(f"wrote {path} ({n / 1e6:.2f}M parameters)")


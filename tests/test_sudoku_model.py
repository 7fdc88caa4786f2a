"""The Sudoku architecture: Auto-class loading, tokenizer contract, layout from tokens, constrained logits."""

from __future__ import annotations

import importlib

import pytest
import torch

import emdm_models.architectures as arch
from emdm_models.architectures.sudoku import MASK_ID, NEG, SEP_ID, ZERO_ID

PUZZLE = "530070000600195000098000060800060003400803001700020006060000280000419005000080079"
SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return arch.save_sudoku_model_dir(tmp_path_factory.mktemp("sudoku"), size="cpu", num_hidden_layers=2)


@pytest.fixture(scope="module")
def loaded(ckpt):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    return AutoModelForMaskedLM.from_pretrained(ckpt).eval(), AutoTokenizer.from_pretrained(ckpt)


def test_auto_classes_load_the_saved_dir(ckpt, loaded):
    from transformers import AutoConfig

    model, tok = loaded
    assert isinstance(model, arch.SudokuForMaskedLM) and AutoConfig.from_pretrained(ckpt).model_type == "emdm_sudoku"
    assert (ckpt / "model.safetensors").is_file()
    assert tok.mask_token_id == MASK_ID == model.config.mask_token_id and tok.pad_token_id == model.config.pad_token_id


def test_import_twice_is_safe():
    importlib.reload(arch)
    from transformers import AutoConfig

    assert AutoConfig.for_model("emdm_sudoku").model_type == "emdm_sudoku"


def test_tokenizer_contract(loaded):
    _, tok = loaded
    bare = tok(PUZZLE, add_special_tokens=False)["input_ids"]
    assert len(bare) == 81 and bare == [ZERO_ID + int(c) for c in PUZZLE]
    assert tok(PUZZLE)["input_ids"] == bare + [SEP_ID]  # the default appends the separator
    assert tok.decode(bare) == PUZZLE and tok.decode(tok(PUZZLE)["input_ids"], skip_special_tokens=True) == PUZZLE
    assert tok("5 3\n0")["input_ids"] == [ZERO_ID + 5, ZERO_ID + 3, ZERO_ID, SEP_ID]
    assert tok.convert_tokens_to_ids(list("0123456789")) == list(range(ZERO_ID, ZERO_ID + 10))


def with_masks(tok, sep: bool = True) -> torch.Tensor:
    """Prompt ids (with or without [SEP]) followed by 81 masks, as the sampler builds them."""
    return torch.tensor([tok(PUZZLE, add_special_tokens=sep)["input_ids"] + [MASK_ID] * 81])


@pytest.mark.parametrize("layout", ["fused", "full"])
def test_layout_comes_from_tokens(layout, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    path = arch.save_sudoku_model_dir(tmp_path, num_hidden_layers=1, layout=layout)
    model, tok = AutoModelForMaskedLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        a = model(with_masks(tok, sep=True)).logits[0, 82:]
        b = model(with_masks(tok, sep=False)).logits[0, 81:]
        ids = with_masks(tok)
        padded = torch.cat([torch.full((1, 3), tok.pad_token_id), ids], 1)
        att = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], 1)
        c = model(padded, attention_mask=att, position_ids=torch.arange(166)[None]).logits[0, 85:]
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)


def test_logits_are_digits_at_cells_and_identity_elsewhere(loaded):
    model, tok = loaded
    ids = with_masks(tok)
    with torch.no_grad():
        logits = model(ids).logits[0]
    assert logits.shape == (163, model.config.vocab_size)
    probs = logits[82:].softmax(-1)
    assert torch.allclose(probs[:, ZERO_ID + 1:ZERO_ID + 10].sum(-1), torch.ones(81))  # solution cells: 1-9 only
    assert torch.isfinite(logits).all() and (logits[82:, :ZERO_ID + 1] == NEG).all()
    assert (logits[:82].argmax(-1) == ids[0, :82]).all()  # given tokens predict themselves


def test_canvas_form_and_bad_lengths(loaded):
    model, _ = loaded
    canvas = torch.tensor([[ZERO_ID + int(c) if c != "0" else MASK_ID for c in PUZZLE]])
    with torch.no_grad():
        out = model(canvas).logits
    assert out.shape == (1, 81, model.config.vocab_size)
    assert (out[0, canvas[0] == MASK_ID, :ZERO_ID + 1] == NEG).all()
    with pytest.raises(ValueError, match="81 or 162 cell tokens"):
        model(canvas[:, :80])


def test_labels_give_a_loss_that_trains(loaded):
    model, tok = loaded
    torch.manual_seed(0)
    config = arch.SudokuConfig(**{**model.config.to_dict(), "fixed_clues": False})  # the paper's: copying is learnt
    model = type(model)(config).train()
    ids = with_masks(tok).repeat(4, 1)
    labels = torch.full_like(ids, -100)  # learn to copy the clues into the masked solution half
    labels[:, 82:] = torch.tensor([ZERO_ID + int(s) if p != "0" else -100 for p, s in zip(PUZZLE, SOLUTION)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(9.0)).item(), abs=0.3) and losses[-1] < losses[0] / 4


def test_fixed_clues_are_certain_and_masked_or_revealed_alike(loaded):
    model, tok = loaded
    assert model.config.fixed_clues  # new model directories fix the clues
    ids = with_masks(tok)
    given = torch.tensor([c != "0" for c in PUZZLE])
    clue_ids = torch.tensor([ZERO_ID + int(c) for c in PUZZLE])
    revealed = ids.clone()
    revealed[0, 82:][given] = clue_ids[given]  # the clue cells of the solution half filled in
    with torch.no_grad():
        masked_out, revealed_out = model(ids).logits[0, 82:], model(revealed).logits[0, 82:]
    assert torch.equal(masked_out[given].argmax(-1), clue_ids[given])
    assert (masked_out[given].softmax(-1).max(-1).values == 1).all()  # a margin of 1: certain
    assert torch.allclose(masked_out, revealed_out, atol=1e-5)  # the model sees the same input either way
    labels = torch.full_like(ids, -100)
    labels[0, 82:][given] = clue_ids[given]
    with torch.no_grad():
        assert model(ids, labels=labels).loss.item() == 0.0  # no loss, so no capacity spent on copying
    free = arch.SudokuForMaskedLM(arch.SudokuConfig(**{**model.config.to_dict(), "fixed_clues": False})).eval()
    with torch.no_grad():
        assert free(ids, labels=labels).loss.item() > 1.0  # without fixing, copying is something to learn


def test_peer_attention_sees_only_row_column_and_box(tmp_path):
    """Three heads (row, column, box), one layer: a cell's prediction depends on its 20 peers and on nothing else."""
    config = arch.SudokuConfig(num_hidden_layers=1, hidden_size=48, num_attention_heads=3, intermediate_size=96,
                               peer_attention=True, fixed_clues=True)
    model = arch.SudokuForMaskedLM(config).eval()
    canvas = torch.full((1, 81), MASK_ID)
    query = 40  # row 4, column 4, box 4
    peers = {i for i in range(81) if i // 9 == 4 or i % 9 == 4 or (i // 27, i % 9 // 3) == (1, 1)} - {query}
    assert len(peers) == 20
    with torch.no_grad():
        base = model(canvas).logits[0, query]
        for cell in (0, 8, 30, 44, 76, 80):  # a peer changes the query's logits, a non-peer does not
            changed = canvas.clone()
            changed[0, cell] = ZERO_ID + 7
            assert torch.allclose(model(changed).logits[0, query], base, atol=1e-6) == (cell not in peers), cell
    mask = model.peer_mask()[0]
    assert mask.shape == (3, 81, 81) and set(mask[:, query].any(0).nonzero().flatten().tolist()) == peers | {query}
    with pytest.raises(ValueError, match="fused"):
        arch.SudokuConfig(peer_attention=True, layout="full")


def test_peer_attention_checkpoint_round_trip(tmp_path):
    from emdm_models.architectures.sudoku import main

    main([str(tmp_path / "p"), "--layers", "1", "--peer-attention"])
    config = arch.SudokuConfig.from_pretrained(tmp_path / "p")
    torch.manual_seed(0)
    fresh = arch.SudokuForMaskedLM(config).eval()  # built directly: the reference mask and weights
    fresh.save_pretrained(tmp_path / "p")
    loaded = arch.SudokuForMaskedLM.from_pretrained(tmp_path / "p").eval()  # transformers builds it on meta
    assert loaded.config.peer_attention and torch.equal(loaded.peer_mask(), fresh.peer_mask())
    assert loaded.peer_mask().shape == (1, 4, 81, 81)
    ids = torch.tensor([[ZERO_ID + int(c) if c != "0" else MASK_ID for c in PUZZLE]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, fresh(ids).logits, atol=1e-6)


def test_configs_without_fixed_clues_load_unfixed(tmp_path):
    import json

    path = arch.save_sudoku_model_dir(tmp_path, num_hidden_layers=1)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["fixed_clues"] is True
    cfg.pop("fixed_clues")  # a checkpoint written before the option existed: the model predicted clue cells
    (path / "config.json").write_text(json.dumps(cfg))
    assert arch.SudokuForMaskedLM.from_pretrained(path).config.fixed_clues is False


def test_sizes_and_config_errors(tmp_path):
    small = arch.SudokuForMaskedLM(arch.SudokuConfig())
    paper = arch.SudokuForMaskedLM(arch.SudokuConfig(hidden_size=384, num_hidden_layers=3, num_attention_heads=12,
                                                     intermediate_size=1536))
    assert 0.7e6 < small.num_parameters() < 1e6 and 5e6 < paper.num_parameters() < 6.5e6
    with pytest.raises(ValueError, match="layout"):
        arch.SudokuConfig(layout="diagonal")
    with pytest.raises(ValueError, match="size"):
        arch.save_sudoku_model_dir(tmp_path, size="huge")


def test_a_mask_past_the_solution_is_eos(loaded):
    model, tok = loaded
    ids = torch.cat([with_masks(tok), torch.tensor([[MASK_ID]])], 1)  # the trainer may mask the closing [EOS]
    labels = torch.full_like(ids, -100)
    labels[0, -1] = tok.eos_token_id
    with torch.no_grad():
        out = model(ids, labels=labels)
    assert out.logits[0, -1].argmax().item() == tok.eos_token_id and out.loss.item() < 1e-3
    ends = torch.cat([with_masks(tok), torch.tensor([[tok.eos_token_id]])], 1)
    with torch.no_grad():
        assert torch.allclose(model(ends).logits[0, :163], out.logits[0, :163])


@pytest.mark.parametrize("layout", ["fused", "full"])
def test_every_parameter_gets_a_gradient(layout, loaded):
    _, tok = loaded
    model = arch.SudokuForMaskedLM(arch.SudokuConfig(num_hidden_layers=1, layout=layout))
    ids = with_masks(tok)
    labels = torch.full_like(ids, -100)
    labels[0, 82:] = torch.tensor([ZERO_ID + int(c) for c in SOLUTION])
    model(ids, labels=labels).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_cli_writes_an_init_dir(tmp_path, capsys):
    from emdm_models.architectures.sudoku import main

    main([str(tmp_path / "m"), "--size", "cpu", "--layers", "2", "--hidden", "64", "--heads", "2"])
    assert "parameters" in capsys.readouterr().out
    cfg = arch.SudokuConfig.from_pretrained(tmp_path / "m")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.layout) == (2, 64, 256, "fused")
    assert cfg.fixed_clues
    main([str(tmp_path / "free"), "--layers", "1", "--no-fixed-clues"])
    assert not arch.SudokuConfig.from_pretrained(tmp_path / "free").fixed_clues
    with pytest.raises(SystemExit, match="divisible"):
        main([str(tmp_path / "bad"), "--hidden", "65"])


# --- 4x4 boards (grid_size=4: 16 cells, 2x2 boxes, digits 1-4) ------------------------------------------------
PUZZLE4 = "1000002000030004"
SOLUTION4 = "1342432121433214"


def test_grid_size_4_loads_and_predicts_digits_1_to_4(tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    path = arch.save_sudoku_model_dir(tmp_path, num_hidden_layers=1, grid_size=4)
    model, tok = AutoModelForMaskedLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    assert model.config.grid_size == 4 and model.config.max_position_embeddings == 34 == tok.model_max_length
    assert model.row_emb.num_embeddings == 5 and model.box_emb.num_embeddings == 5
    ids = torch.tensor([tok(PUZZLE4)["input_ids"] + [MASK_ID] * 16])
    assert ids.shape[1] == 33
    with torch.no_grad():
        logits = model(ids).logits[0]
        canvas = model(torch.tensor([[ZERO_ID + int(c) if c != "0" else MASK_ID for c in PUZZLE4]])).logits[0]
    probs = logits[17:].softmax(-1)
    assert torch.allclose(probs[:, ZERO_ID + 1:ZERO_ID + 5].sum(-1), torch.ones(16))  # digits 1-4 only
    assert (logits[:17].argmax(-1) == ids[0, :17]).all()
    assert canvas.shape == (16, model.config.vocab_size) and (canvas[1, ZERO_ID + 5:ZERO_ID + 10] == NEG).all()
    with pytest.raises(ValueError, match="16 or 32 cell tokens"):
        model(ids[:, :20])
    with pytest.raises(ValueError, match="grid_size"):
        arch.SudokuConfig(grid_size=6)


def test_grid_size_4_trains(tmp_path):
    torch.manual_seed(0)
    model = arch.SudokuForMaskedLM(arch.SudokuConfig(grid_size=4, num_hidden_layers=1, hidden_size=32,
                                                     num_attention_heads=2, intermediate_size=64)).train()
    ids = torch.tensor([[ZERO_ID + int(c) for c in PUZZLE4] + [SEP_ID] + [MASK_ID] * 16] * 4)
    labels = torch.full_like(ids, -100)
    labels[:, 17:] = torch.tensor([ZERO_ID + int(c) for c in SOLUTION4])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = model(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(4.0)).item(), abs=0.3) and losses[-1] < losses[0] / 4


def test_configs_without_grid_size_load_as_9x9(tmp_path):
    import json

    path = arch.save_sudoku_model_dir(tmp_path, num_hidden_layers=1)
    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("grid_size", None)  # a checkpoint written before grid_size existed
    (path / "config.json").write_text(json.dumps(cfg))
    model = arch.SudokuForMaskedLM.from_pretrained(path)
    assert model.config.grid_size == 9 and model.cells == 81 and model.row_emb.num_embeddings == 10


def test_cli_grid_size_4(tmp_path, capsys):
    from emdm_models.architectures.sudoku import main

    main([str(tmp_path / "m4"), "--grid-size", "4", "--layers", "1"])
    cfg = arch.SudokuConfig.from_pretrained(tmp_path / "m4")
    assert (cfg.grid_size, cfg.max_position_embeddings) == (4, 34)

"""Shared fixtures: tiny offline checkpoints and a fake denoiser with known logits."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from emdm_models.denoiser import Denoiser  # noqa: E402
from emdm_models.tiny import build_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the CPU is shared (use with `pytest.mark.usefixtures`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """One tiny checkpoint per family (bert, modernbert, llada, dream, sdar, a2d, remote), built once per session."""
    from emdm_models.tiny import FAMILIES

    root = tmp_path_factory.mktemp("ckpt")
    return {fam: str(build_tiny_checkpoint(root / fam, fam)) for fam in FAMILIES}


@pytest.fixture(scope="session")
def demo_training_setup():
    """Builds a tiny `family` checkpoint and a demo-corpus text file under a folder, for training-CLI tests:
    `demo_training_setup(root, family) -> {"root", "model", "data"}`."""
    from emdm_models.tiny import DEMO_CORPUS

    def build(root, family: str) -> dict:
        (root / "corpus.txt").write_text("\n".join(DEMO_CORPUS * 8))
        return {"root": root, "model": str(build_tiny_checkpoint(root / family, family)),
                "data": str(root / "corpus.txt")}

    return build


@pytest.fixture(scope="session")
def bert_checkpoint(tiny_checkpoints) -> str:
    return tiny_checkpoints["bert"]


class FakeDenoiser(Denoiser):
    """A denoiser whose logits at each position come from a fixed table indexed by the position in its row.

    `table` is [positions, vocab]; the position counts from the row's first real token, so padding does not
    matter. `fn` (optional) maps (input_ids, rel_positions) -> logits for context-dependent fakes.
    """

    def __init__(self, table: torch.Tensor | None = None, vocab: int = 8, mask_token_id: int = 7,
                 eos_token_id: int | None = 6, max_length: int = 64, fn=None, surprise=None):
        super().__init__(torch.nn.Linear(1, 1), tokenizer=None, mask_token_id=mask_token_id,
                         eos_token_id=eos_token_id, pad_token_id=0, max_length=max_length, surprise=surprise)
        self.table, self.fn, self._vocab = table, fn, vocab

    @property
    def vocab_size(self) -> int:
        return self._vocab

    def logits(self, input_ids, attention_mask=None):
        self.forward_calls += 1
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        rel = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if self.fn is not None:
            return self.fn(input_ids, rel).float()
        return self.table[rel].float()


@pytest.fixture
def fake_denoiser():
    return FakeDenoiser


_REFERENCE = {"ran": 0, "skipped": 0}


def pytest_runtest_logreport(report):
    """Count the tests that compare with the reference code (../shared/oracles), ran or skipped for its absence."""
    if report.skipped and "reference code not available" in str(report.longrepr):
        _REFERENCE["skipped"] += 1
    elif report.when == "call" and not report.skipped and "test_reference" in report.nodeid:
        _REFERENCE["ran"] += 1


def pytest_terminal_summary(terminalreporter):
    ran, skipped = _REFERENCE["ran"], _REFERENCE["skipped"]
    if ran or skipped:
        where = " (the reference code is missing: put it in ../shared/oracles or set EMDM_ORACLES)" if skipped else ""
        terminalreporter.write_line(f"reference-code tests: {ran} ran, {skipped} skipped{where}")

"""Chat-format training rows: `messages` lists rendered with the tokenizer's chat template, assistant turns only
trained on.

Each assistant turn's tokens are found by rendering the conversation twice: up to the turn with the generation
prompt (everything the model is given: the system and user turns and the assistant header) and up to the end of
the turn; the tokens between are the turn (its end-of-turn token included, so the model learns to stop). A
template whose renderings are not prefixes of each other cannot be split this way and is refused with its name.
With `pad_with_eos` (LLaDA's SFT convention) each row is filled to `max_length` with EOS tokens that belong to
the last assistant turn: they are masked and predicted, and the model learns to fill unused length with EOS.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from emdm_core.prompts import read_chat_template

from .errors import DataError

ROLES = ("system", "user", "assistant", "tool")


def resolve_template(tokenizer: Any, template: str | None) -> None:
    """Set `template` (a Jinja file or string) on the tokenizer, or check that it has one."""
    if template:
        tokenizer.chat_template = read_chat_template(template)
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("chat data needs a chat template: this tokenizer has none; pass --chat-template FILE (a "
                        "Jinja template) or a tokenizer that ships one")


def _render(tokenizer: Any, messages: Sequence[dict], generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=generation_prompt,
                                        return_dict=False)
    return list(out["input_ids"] if isinstance(out, dict) else out)


def _check_messages(messages: Any, row: int) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"chat row {row}: messages must be a non-empty list of {{role, content}} (got "
                        f"{type(messages).__name__})")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"chat row {row}: every message needs a role ({', '.join(ROLES)}) and a text content "
                            f"(got {m!r:.80})")
    return messages


def render_conversation(tokenizer: Any, messages: Sequence[dict], row: int = 0) -> tuple[list[int], list[bool]]:
    """(token ids, trainable flags) of one conversation: True on the tokens of the assistant turns."""
    messages = _check_messages(messages, row)
    ids = _render(tokenizer, messages, False)
    trainable = [False] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True)
        through = _render(tokenizer, messages[: i + 1], False)
        if through[: len(before)] != before or ids[: len(through)] != through:
            raise DataError(f"chat row {row}: the chat template does not render a conversation as a prefix of its "
                            f"continuation, so the assistant turns cannot be told apart; pass --chat-template with "
                            f"one that does")
        for j in range(len(before), len(through)):
            trainable[j] = True
    if not any(trainable):
        raise DataError(f"chat row {row}: no assistant turn to train on (roles: "
                        f"{', '.join(m['role'] for m in messages)})")
    return ids, trainable


def tokenize_chat(ds: Any, tokenizer: Any, field: str, max_length: int, eos_id: int | None, pad_with_eos: bool,
                  progress: bool = False, desc: str = "tokenising") -> tuple[Any, dict[str, int]]:
    """TokenData of chat rows (column `field`): rows longer than `max_length` lose their end; rows without a
    trainable token left after that are dropped."""
    from emdm_core.progress import progress_bar

    from .corpus import TokenData

    if pad_with_eos and eos_id is None:
        raise DataError("--pad-with-eos needs an EOS token; this tokenizer has none")
    rows, flags = [], []
    truncated = dropped = 0
    for r, messages in enumerate(progress_bar(ds[field], desc=desc, enabled=progress, unit="row")):
        ids, trainable = render_conversation(tokenizer, messages, r)
        if len(ids) > max_length:
            ids, trainable = ids[:max_length], trainable[:max_length]
            truncated += 1
        if not any(trainable):
            dropped += 1
            continue
        if pad_with_eos and len(ids) < max_length:
            fill = max_length - len(ids)
            ids, trainable = ids + [eos_id] * fill, trainable + [True] * fill
        rows.append(np.asarray(ids, dtype=np.int32))
        flags.append(np.asarray(trainable, dtype=bool))
    if not rows:
        return (TokenData(np.zeros(0, np.int32), np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, bool)),
                {"rows": 0, "dropped": dropped})
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in rows], dtype=np.int64)])
    data = TokenData(np.concatenate(rows), offsets, np.zeros(len(rows), dtype=np.int32), np.concatenate(flags))
    return data, {"rows": len(data), "tokens": int(offsets[-1]), "trainable_tokens": int(data.trainable.sum()),
                  "truncated": truncated, "dropped": dropped}

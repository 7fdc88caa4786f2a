"""Paths in one place: telling local paths from Hub ids (checkpoints, tokenizers and datasets take either), and
checking an output location before hours of work are spent filling it."""

from __future__ import annotations

import os


def looks_local(name: str) -> bool:
    """True for strings that can only be local paths: they exist, start with `.`, `/` or `~`, or have more than
    one `/` (a Hub id is `name` or `org/name`)."""
    name = str(name)
    return (name.startswith((".", "/", "~")) or name.count("/") > 1
            or os.path.exists(os.path.expanduser(name)))


def output_problem(path: str) -> str | None:
    """Why results could not be written to `path` (lm-eval's --output_path: a folder, or a .json file in one), or
    None. Checked up front: lm-eval itself only warns after the whole evaluation."""
    target = os.path.abspath(os.path.expanduser(str(path)))
    if target.endswith(".json"):
        target = os.path.dirname(target)
    probe = target
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe} is a file, so no folder can be made under it"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None

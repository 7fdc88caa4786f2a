"""Telling local paths from Hub ids, in one place (checkpoints, tokenizers and datasets all take either)."""

from __future__ import annotations

import os


def looks_local(name: str) -> bool:
    """True for strings that can only be local paths: they exist, start with `.`, `/` or `~`, or have more than
    one `/` (a Hub id is `name` or `org/name`)."""
    name = str(name)
    return (name.startswith((".", "/", "~")) or name.count("/") > 1
            or os.path.exists(os.path.expanduser(name)))

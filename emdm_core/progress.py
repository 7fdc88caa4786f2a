"""Progress bars that suit where the output goes: a live bar on a terminal, nothing in a log file.

tqdm writes every refresh to a non-terminal stderr as another line (hundreds of lines in a training log); runs
that log periodic lines of their own (training, evaluation summaries) print only those there.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def interactive() -> bool:
    """Whether stderr is a terminal (where a live progress bar belongs)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_bar(*args: Any, enabled: bool = True, **kwargs: Any) -> tqdm:
    """`tqdm(*args, **kwargs)`, shown only when `enabled` and stderr is a terminal."""
    return tqdm(*args, disable=not (enabled and interactive()), **kwargs)


def library_bars_follow_terminal() -> None:
    """transformers' and datasets' own bars (loading and writing weights, mapping) off when stderr is not a
    terminal: a log file gets no bar lines from them either."""
    if interactive():
        return
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        import datasets
    except ImportError:  # datasets is optional for loading a model
        return
    datasets.disable_progress_bars()

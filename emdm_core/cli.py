"""The one way emdm's command-line entry points report bad input: `error: <one line>` and exit status 2.

Every `main()` of emdm (`python -m emdm_sampling`, `emdm-eval`, `emdm-train`, the ablation CLI, the studies) runs
through `run_cli`; the plain `lm_eval` CLI gets the same through `install_excepthook`. `EMDM_TRACEBACK=1` shows the
full traceback instead.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from .errors import EMDMError

TRACEBACK_ENV = "EMDM_TRACEBACK"


def want_traceback() -> bool:
    """Whether the user asked for full tracebacks (`EMDM_TRACEBACK=1`)."""
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def error_line(exc: BaseException) -> str:
    """The one line printed for an error: emdm's own message, or the OS's for a file-system error."""
    if isinstance(exc, OSError) and not isinstance(exc, EMDMError):
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        return f"{exc.strerror or type(exc).__name__}{where}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None, *,
            interrupted: str = "interrupted") -> int:
    """Run `main(argv)`; emdm errors and file-system errors become one `error:` line (exit 2), Ctrl-C one line
    saying `interrupted` (exit 130)."""
    try:
        return int(main(argv) or 0)
    except EMDMError as exc:
        if want_traceback():
            raise
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    except (PermissionError, NotADirectoryError, IsADirectoryError, FileNotFoundError) as exc:
        if want_traceback():
            raise
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if want_traceback():
            raise
        print(f"\n{interrupted}", file=sys.stderr)
        return 130


def _excepthook(exc_type, exc, tb, _previous=sys.excepthook):
    """Uncaught emdm errors print as one line (`EMDM_TRACEBACK=1` for the traceback)."""
    if isinstance(exc, EMDMError) and not want_traceback():
        sys.stderr.write(f"error: {error_line(exc)}\n")
        return
    _previous(exc_type, exc, tb)


def install_excepthook() -> None:
    """Make uncaught `EMDMError`s print as one line in programs emdm does not own (the plain `lm_eval` CLI)."""
    if not getattr(sys.excepthook, "_emdm", False):
        _excepthook._emdm = True  # type: ignore[attr-defined]
        sys.excepthook = _excepthook

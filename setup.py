"""Build hooks that pyproject.toml alone cannot express (all metadata lives in pyproject.toml).

1. `emdm_lm_eval.pth` goes to the top of site-packages, so that a plain `lm_eval --model emdm ...` finds the model
   (lm-eval 0.4.x has no plugin entry points; see emdm_eval/registration.py). A regular wheel gets it through
   build_lib; a PEP 660 editable wheel (`pip install -e .`) through the unpacked-wheel folder that setuptools'
   `editable_wheel` writes into the wheel next to its own `__editable__` finder.
2. The project's `tasks/` folder is copied into the wheel as `emdm_eval/tasks/` (an editable install uses the
   checkout's `tasks/` directly; see `emdm_eval.tasks_dir()`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PTH_NAME = "emdm_lm_eval.pth"
# Keep in sync with emdm_eval.registration.PTH_LINE (a test checks the installed file).
PTH_LINE = ("import sys; exec(\"try:\\n from emdm_eval import registration as _emdm_r; _emdm_r.install_hook()\\n"
            "except Exception:\\n pass\")\n")
SKIP_SUFFIXES = {".pyc", ".pyo"}  # everything else under tasks/ ships (YAML includes, data, loaders, READMEs)


class build_py_with_hook(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            # editable_wheel points install_lib at the unpacked wheel; everything there ends up in the wheel.
            target = Path(self.get_finalized_command("install").install_lib)
        else:
            target = Path(self.build_lib)
            self._copy_tasks(target / "emdm_eval" / "tasks")
        target.mkdir(parents=True, exist_ok=True)
        (target / PTH_NAME).write_text(PTH_LINE)
        self._emdm_outputs = getattr(self, "_emdm_outputs", []) + [str(target / PTH_NAME)]

    def _copy_tasks(self, dest: Path) -> None:
        src = ROOT / "tasks"
        if not src.is_dir():
            return
        copied = []
        for path in sorted(src.rglob("*")):
            if path.is_file() and path.suffix not in SKIP_SUFFIXES and "__pycache__" not in path.parts:
                out = dest / path.relative_to(src)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, out)
                copied.append(str(out))
        self._emdm_outputs = getattr(self, "_emdm_outputs", []) + copied

    def get_outputs(self, include_bytecode=True):
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs += [o for o in getattr(self, "_emdm_outputs", []) if o not in outputs]
        return outputs


if __name__ == "__main__" or os.environ.get("_EMDM_SETUP_IMPORT") is None:
    setup(cmdclass={"build_py": build_py_with_hook})

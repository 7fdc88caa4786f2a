"""Make `lm_eval --model emdm` work with the plain lm-evaluation-harness CLI.

lm-eval 0.4.x has no plugin entry points for models: `get_model` imports `lm_eval.models` (which registers the
built-in models lazily) only when the registry is empty, and `--include_path` loads task YAMLs only. So emdm ships
a `.pth` file (`emdm_lm_eval.pth`, run by `site` at interpreter start-up) that calls `install_hook()`: a
`sys.meta_path` finder that waits for `lm_eval.api.registry` to be imported, and right after that module has run,
imports `lm_eval.models` (so the built-ins `hf`, `vllm`, ... are registered first and never vanish) and registers
`emdm` as a lazy placeholder `emdm_eval.model:EMDMLM`.

This module must stay tiny: it is imported at every interpreter start-up. It imports neither torch nor lm_eval
until lm_eval itself is being imported, installs at most one finder however often it runs, and swallows every
error (a broken hook must never break the host program; `python -m emdm_eval` works without it).

Set `EMDM_LM_EVAL_HOOK=0` to disable the hook.
"""

from __future__ import annotations

import os
import sys

MODEL_NAME = "emdm"
MODEL_TARGET = "emdm_eval.model:EMDMLM"
_REGISTRY_MODULE = "lm_eval.api.registry"
_MARK = "_emdm_lm_eval_hook"

# The exact line of the `.pth` file setup.py installs into site-packages (kept here so tests can check it).
PTH_NAME = "emdm_lm_eval.pth"
PTH_LINE = ("import sys; exec(\"try:\\n from emdm_eval import registration as _emdm_r; _emdm_r.install_hook()\\n"
            "except Exception:\\n pass\")\n")

last_error: BaseException | None = None


def register() -> bool:
    """Register `emdm` in lm-eval's model registry (built-ins first). True if this call added it."""
    import lm_eval.models  # noqa: F401  -- registers the built-in models; must come before any registration
    from lm_eval.api.registry import model_registry

    if MODEL_NAME in model_registry:
        return False
    model_registry.register(MODEL_NAME, target=_placeholder())
    return True


def _placeholder():
    """Our own `lm_eval.models` entry point when installed, else the "module:Class" string.

    An entry point equals the one a harness that loads the `lm_eval.models` group itself (lm-eval's main branch)
    would register, so the two registrations do not collide; both are lazy (nothing imported until used).
    """
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group="lm_eval.models"):
            if ep.name == MODEL_NAME and ep.value.replace(" ", "") == MODEL_TARGET:
                return ep
    except Exception:
        pass
    return MODEL_TARGET


def _after_registry_import() -> None:
    global last_error
    try:
        register()
    except Exception as exc:  # never break the program that imports lm_eval
        last_error = exc
        try:
            sys.stderr.write(f"emdm: could not register the lm-eval model 'emdm' ({type(exc).__name__}: {exc}); "
                             f"use `python -m emdm_eval ...` instead\n")
        except Exception:
            pass


class _LoaderProxy:
    """Wraps the real loader of `lm_eval.api.registry`: run the module, then register emdm."""

    def __init__(self, loader):
        self._emdm_loader = loader

    def create_module(self, spec):
        create = getattr(self._emdm_loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module):
        self._emdm_loader.exec_module(module)
        _after_registry_import()

    def __getattr__(self, name):  # get_source, get_filename, is_package, get_resource_reader, ...
        return getattr(self._emdm_loader, name)


class _RegistryImportHook:
    """A meta path finder that only ever answers for `lm_eval.api.registry` (and defers to the real finders)."""

    _emdm_lm_eval_hook = True

    def __init__(self):
        self._busy = False
        self.fired = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _REGISTRY_MODULE or self._busy:
            return None
        self._busy = True
        try:
            for finder in list(sys.meta_path):
                if getattr(finder, _MARK, False):
                    continue
                find = getattr(finder, "find_spec", None)
                if find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
            if spec.loader is None or not hasattr(spec.loader, "exec_module"):
                return spec
            spec.loader = _LoaderProxy(spec.loader)
            self.fired = True
            return spec
        except Exception:
            return None
        finally:
            self._busy = False


def install_hook() -> bool:
    """Install the finder (idempotent). If lm_eval's registry is already imported, register right away."""
    try:
        if os.environ.get("EMDM_LM_EVAL_HOOK", "1").strip().lower() in ("0", "false", "no", "off"):
            return False
        if _REGISTRY_MODULE in sys.modules:
            _after_registry_import()
            return True
        if any(getattr(f, _MARK, False) for f in sys.meta_path):
            return False
        sys.meta_path.insert(0, _RegistryImportHook())
        return True
    except Exception:
        return False

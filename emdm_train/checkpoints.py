"""Which checkpoints are complete: a manifest (every file with its size and sha256) written last.

A checkpoint counts as complete only when its `emdm_train_state/manifest.json` exists and every file it lists is
there with that size (and, when `hashes=True`, that content). A prune or a copy interrupted half-way, or a file
deleted later, makes it incomplete: resume then refuses it in one line and takes the newest complete one. A manifest
that cannot be read is damage, and so is a missing one where the checkpoint's state says its run wrote one
(`"manifest": true`); only checkpoints written before manifests existed are accepted without one, when every file a
run needs is present.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

STATE_DIR = "emdm_train_state"
MANIFEST = "manifest.json"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
# what a run needs to continue from a checkpoint written before manifests existed
_LEGACY_REQUIRED = ("config.json", f"{STATE_DIR}/state.json", f"{STATE_DIR}/optimizer.pt",
                    f"{STATE_DIR}/scheduler.pt")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    manifest = directory / STATE_DIR / MANIFEST
    return sorted(p for p in directory.rglob("*") if p.is_file() and p != manifest)


def write_manifest(directory: str | os.PathLike) -> Path:
    """Record every file of `directory` (size, sha256) in its manifest, written atomically and last."""
    directory = Path(directory)
    entries = {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": _sha256(p)}
               for p in _files(directory)}
    target = directory / STATE_DIR / MANIFEST
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": entries}, indent=1))
    os.replace(tmp, target)
    return target


def read_manifest(directory: str | os.PathLike) -> dict[str, dict] | None:
    """The files a checkpoint's manifest lists, or None when it has no (readable) manifest."""
    path = Path(directory) / STATE_DIR / MANIFEST
    try:
        return json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError):
        return None


def checkpoint_problem(directory: str | os.PathLike, hashes: bool = False) -> str | None:
    """Why `directory` is not a complete checkpoint (one line), or None when it is."""
    directory = Path(directory)
    if not directory.is_dir():
        return f"{directory} does not exist"
    files = read_manifest(directory)
    if files is None and (directory / STATE_DIR / MANIFEST).exists():
        return f"{directory.name}: its manifest is damaged (unreadable), so its files cannot be verified"
    if files is None and _writes_manifests(directory):
        return f"{directory.name} has no manifest although its run writes one: damaged or incomplete"
    if files is None:
        missing = [f for f in _LEGACY_REQUIRED if not (directory / f).is_file()]
        if not any((directory / w).is_file() for w in _WEIGHTS):
            missing.append("model.safetensors")
        return f"{directory.name} has no manifest and lacks {', '.join(missing)}" if missing else None
    for name, entry in files.items():
        path = directory / name
        if not path.is_file():
            return f"{directory.name} lacks {name}"
        if path.stat().st_size != entry["size"]:
            return f"{directory.name}: {name} has {path.stat().st_size} bytes, the manifest says {entry['size']}"
        if hashes and _sha256(path) != entry["sha256"]:
            return f"{directory.name}: {name} does not match its manifest (changed or corrupt)"
    return None


def _writes_manifests(directory: Path) -> bool:
    """Whether the run that wrote this checkpoint writes manifests (its state says so; an unreadable state: yes)."""
    state = directory / STATE_DIR / "state.json"
    if not state.is_file():
        return False
    try:
        return bool(json.loads(state.read_text()).get("manifest", False))
    except (OSError, ValueError, AttributeError):
        return True


def checkpoint_dirs(output: str | os.PathLike) -> list[tuple[int, Path]]:
    """Every `checkpoint-N` folder (complete or not), oldest first."""
    output = Path(output)
    found = []
    if output.is_dir():
        for p in output.iterdir():
            m = _CKPT_RE.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
    return sorted(found)


def list_checkpoints(output: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints (sizes checked), oldest first."""
    return [(step, p) for step, p in checkpoint_dirs(output) if checkpoint_problem(p) is None]

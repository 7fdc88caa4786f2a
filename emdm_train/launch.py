"""Make `accelerate launch --cpu --num_processes N -m emdm_train ...` run N processes.

accelerate (1.x) starts a single process for `--cpu` (several CPU processes need `mpirun` and a host file), so
the command above would silently train with one process. When emdm_train finds itself started that way (the
launcher's `ACCELERATE_USE_CPU` and `MASTER_ADDR` are set, no `WORLD_SIZE`) and the parent `accelerate launch`
asked for N > 1 processes, it re-starts itself under `torch.distributed.run` with N CPU processes (gloo backend)
-- what `accelerate launch --multi_gpu` does on GPUs. `EMDM_TRAIN_NO_RELAUNCH=1` turns this off.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def _flag_value(args: list[str], names: tuple[str, ...]) -> str | None:
    for i, a in enumerate(args):
        for name in names:
            if a == name and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
    return None


def requested_cpu_processes() -> int:
    """Processes the parent `accelerate launch --cpu` asked for (1 when not launched that way or unknown)."""
    env = os.environ
    if env.get("EMDM_TRAIN_NO_RELAUNCH") == "1" or "WORLD_SIZE" in env or "LOCAL_RANK" in env:
        return 1
    if env.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1") or "MASTER_ADDR" not in env:
        return 1
    try:
        import psutil

        parent = psutil.Process(os.getppid()).cmdline()
    except Exception:
        return 1
    if not any("accelerate" in a for a in parent[:3]) or not any("launch" in a for a in parent[:4]):
        return 1
    args = parent[: parent.index("emdm_train")] if "emdm_train" in parent else parent  # the launcher's own flags
    value = _flag_value(args, ("--num_processes", "--num-processes"))
    if value is None:
        config = _flag_value(args, ("--config_file", "--config-file"))
        value = _config_processes(Path(config) if config else None)
    try:
        return max(1, int(value)) if value is not None else 1
    except ValueError:
        return 1


def _config_processes(path: Path | None) -> str | None:
    try:
        from accelerate.commands.config import default_config_file

        path = path or Path(default_config_file)
        if path.is_file():
            import yaml

            return str((yaml.safe_load(path.read_text()) or {}).get("num_processes"))
    except Exception:
        return None
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relaunch_on_cpu(nprocs: int, argv: list[str]) -> int:
    """Run `python -m emdm_train argv` as `nprocs` CPU processes under torch.distributed.run; return its status."""
    env = dict(os.environ, ACCELERATE_USE_CPU="True", EMDM_TRAIN_NO_RELAUNCH="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nprocs),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "emdm_train", *argv]
    print(f"emdm_train: accelerate launch --cpu starts one process; running {nprocs} CPU processes with "
          f"torch.distributed.run (gloo)", file=sys.stderr)
    return subprocess.call(cmd, env=env)

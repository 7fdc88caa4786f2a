"""Make `accelerate launch --cpu --num_processes N ...` really run N processes (training and evaluation).

accelerate (1.x) starts a single process for `--cpu` (several CPU processes need `mpirun` and a host file), so such
a command would silently run with one process. When emdm finds itself started that way (the launcher's
`ACCELERATE_USE_CPU` and `MASTER_ADDR` are set, there is no `WORLD_SIZE`, and the parent `accelerate launch` asked for
N > 1 processes), it runs the same command again under `torch.distributed.run` with N CPU processes (gloo) and exits
with its status: what `accelerate launch --multi_gpu` does on GPUs. `EMDM_NO_RELAUNCH=1` turns this off.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

NO_RELAUNCH_ENV = "EMDM_NO_RELAUNCH"


def _flag_value(args: list[str], names: tuple[str, ...]) -> str | None:
    for i, a in enumerate(args):
        for name in names:
            if a == name and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
    return None


def _launcher_flags(cmdline: list[str]) -> list[str]:
    """The `accelerate launch` flags: after `launch`, before the launched module (`-m`) or script."""
    start = next((i + 1 for i, a in enumerate(cmdline[:4]) if "launch" in a), 0)
    rest = cmdline[start:]
    for i, a in enumerate(rest):
        if a in ("-m", "--module"):
            return rest[:i]
    return rest


def requested_cpu_processes() -> int:
    """Processes the parent `accelerate launch --cpu` asked for (1 when not launched that way or unknown)."""
    env = os.environ
    if env.get(NO_RELAUNCH_ENV) == "1" or "WORLD_SIZE" in env or "LOCAL_RANK" in env:
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
    flags = _launcher_flags(parent)
    value = _flag_value(flags, ("--num_processes", "--num-processes"))
    if value is None:
        config = _flag_value(flags, ("--config_file", "--config-file"))
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


def _this_command() -> list[str]:
    """This process's command without the interpreter: `-m module args` or `script args`."""
    argv = list(getattr(sys, "orig_argv", []) or [sys.executable, *sys.argv])[1:]
    if "-m" in argv:
        return argv[argv.index("-m"):]
    while argv and argv[0].startswith("-"):  # interpreter options such as -u, -X dev
        argv = argv[2:] if argv[0] in ("-X", "-W") else argv[1:]
    return argv


def relaunch_on_cpu(nprocs: int, command: list[str] | None = None) -> int:
    """Run `command` (default: this one) as `nprocs` CPU processes under torch.distributed.run; return its status."""
    command = command if command is not None else _this_command()
    env = dict(os.environ, ACCELERATE_USE_CPU="True", **{NO_RELAUNCH_ENV: "1"})
    env.setdefault("OMP_NUM_THREADS", "1")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nprocs),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *command]
    print(f"emdm: accelerate launch --cpu starts one process; running {nprocs} CPU processes with "
          f"torch.distributed.run (gloo)", file=sys.stderr, flush=True)
    return subprocess.call(cmd, env=env)

"""The machine a run is on: its description, stated next to every timing (dfkd compare, dfkd evaluate,
benchmarks), and the number of CPU threads a run uses when other jobs already occupy cores."""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Set

# torch reads its thread count from these at start-up: a value in either is the user's choice, never changed
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def machine_description() -> Dict[str, str]:
    """CPU model, usable cores, torch version and threads, GPU, load, UTC date."""
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), platform.machine())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": str(cores), "torch": torch.__version__, "torch_threads": str(torch.get_num_threads()),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
            "python": platform.python_version(), "load": f"{os.getloadavg()[0]:.2f}",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def threads_to_use(cores: int, cpus: int, load: float, torch_threads: int, env: Mapping[str, str]) -> Optional[int]:
    """The CPU threads a run should use, or None to leave torch's count as it is.

    ``cores``: the cores this process may run on (its affinity); ``cpus``: the machine's CPUs, over which
    ``load`` (the 1-minute load average) is counted; ``torch_threads``: torch's current count. Other jobs
    occupy ``round(load)`` CPUs; when fewer are idle than ``torch_threads``, use that many (at least 1):
    with more threads than idle cores, every parallel op waits for its slowest, descheduled thread.
    None when ``env`` sets the count (``THREAD_VARS``): the user chose it.
    """
    if any(env.get(var) for var in THREAD_VARS):
        return None
    idle = min(cores, cpus - int(load + 0.5))
    return max(1, idle) if idle < torch_threads else None


def torch_default_threads(cpus: Set[int]) -> Set[int]:
    """The counts torch starts with on these CPUs: one thread per CPU, or per physical core (hyper-threads
    of one core counted once). Any other count was set with torch.set_num_threads."""
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:  # no topology (not Linux, some containers): one thread per CPU
            return {len(cpus)}
    return {len(cpus), len(cores)}


def pick_threads(print_fn: Callable[[str], None] = print) -> int:
    """Lower torch's CPU thread count when other jobs occupy cores (``threads_to_use``), saying so in one
    line through ``print_fn``; a count set in the environment or with torch.set_num_threads is kept.
    Returns the count torch uses."""
    import torch

    current = torch.get_num_threads()
    if not hasattr(os, "getloadavg"):  # Windows: no load average to go by
        return current
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cpus, load = os.cpu_count() or len(affinity), os.getloadavg()[0]
    threads = threads_to_use(len(affinity), cpus, load, current, os.environ)
    if threads is None or current not in torch_default_threads(affinity):
        return current
    torch.set_num_threads(threads)
    print_fn(f"dfkd: other jobs keep the CPUs busy (load average {load:.1f} over the last minute, {cpus} CPUs), so this "
             f"run uses {threads} CPU thread{'s' if threads > 1 else ''}, not {current}; set OMP_NUM_THREADS=N to choose")
    return threads


def command_line(script: str, argv) -> str:
    """The command that reproduces a benchmark's measurement: its thread setting (``THREAD_VARS`` set in the
    environment), the script and its arguments, shell-quoted."""
    import shlex

    env = " ".join(f"{var}={os.environ[var]}" for var in THREAD_VARS if os.environ.get(var))
    return " ".join(filter(None, [env, "python", script, *map(shlex.quote, argv)]))

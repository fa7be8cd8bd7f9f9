"""The machine a measurement ran on: stated next to every timing (dfkd compare, dfkd evaluate, benchmarks)."""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict


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

"""What a benchmark report says about the machine it ran on: the CPU model and the load.

These machines are shared and noisy, so every report records ``uptime`` (load averages) next to
its figures; ``cpu_model`` names the processor from ``/proc/cpuinfo`` where there is one.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def uptime() -> str:
    """``uptime``'s line (time, up, users, load averages), or the load averages alone without it."""
    try:
        done = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5, check=True)
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def one_line() -> str:
    """OS, architecture, CPUs, Python and the 1-minute load average now, for a report's header."""
    load = os.getloadavg()
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"load average {load[0]:.2f} at the start (other processes may share the CPUs)"
    )

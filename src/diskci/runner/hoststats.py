"""This host's disk, memory and load, as the runner's heartbeat sends them (bytes; load averages).

``host_stats(work_dir)`` is the heartbeat body: ``{"disk": {"path", "total", "free"}, "memory":
{"total", "available"}, "load": [1 min, 5 min, 15 min]}``: the disk of the runner's work directory
(where builds land), memory from ``/proc/meminfo``, load from ``os.getloadavg``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["host_stats", "memory"]

MEMINFO = Path("/proc/meminfo")


def memory(meminfo: Path = MEMINFO) -> dict[str, int]:
    """Total and available memory in bytes (0 when /proc/meminfo cannot be read)."""
    values: dict[str, int] = {}
    try:
        text = meminfo.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if key in ("MemTotal", "MemAvailable") and parts and parts[0].isdigit():
            values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return {"total": values.get("MemTotal", 0), "available": values.get("MemAvailable", 0)}


def host_stats(work_dir: Path) -> dict[str, Any]:
    work_dir = Path(work_dir)
    probe = work_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = [0.0, 0.0, 0.0]
    return {
        "disk": {"path": str(work_dir), "total": usage.total, "free": usage.free},
        "memory": memory(),
        "load": load,
    }

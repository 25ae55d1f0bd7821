"""What this machine can hold: its memory, and on a Mac what its GPU may wire.

On Apple silicon the GPU shares the machine's memory but may wire (pin) only up
to a limit: ``sysctl iogpu.wired_limit_mb`` when the user raised or lowered it,
else the default macOS picks (about two thirds of memory on smaller Macs, three
quarters on larger ones), which MLX reports as its recommended working set. A
model beyond it pages, however much memory is free. :func:`default_budget` is
the memory budget a manifest gets when it leaves ``memory_budget`` at its
default: three quarters of memory, and on a Mac no more than the GPU may wire.
"""

from __future__ import annotations

import subprocess
import sys

import psutil

DEFAULT_SHARE = 0.75  # of physical memory, the budget where the GPU has no limit of its own


def total_memory() -> int:
    """Physical memory in bytes."""
    return int(psutil.virtual_memory().total)


def default_budget(total: int, wired_limit: int | None) -> int:
    """The default memory budget: ``DEFAULT_SHARE`` of ``total`` bytes, and no more than
    ``wired_limit`` bytes (what the GPU may wire; None where there is no such limit).
    Pure."""
    share = int(total * DEFAULT_SHARE)
    return share if wired_limit is None else min(share, wired_limit)


def gpu_wired_limit() -> int | None:
    """Bytes the GPU may wire on this Mac, None elsewhere or when it cannot be read:
    ``iogpu.wired_limit_mb`` when set (not 0), else MLX's recommended working set."""
    if sys.platform != "darwin":
        return None
    configured = _sysctl_megabytes("iogpu.wired_limit_mb")
    if configured:
        return configured * 2**20
    return _recommended_working_set()


def _sysctl_megabytes(name: str) -> int | None:
    try:
        done = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = done.stdout.strip()
    return int(text) if done.returncode == 0 and text.isdigit() else None


def _recommended_working_set() -> int | None:
    try:
        import mlx.core as mx

        info = mx.device_info()
    except (ImportError, AttributeError, RuntimeError):
        return None
    value = info.get("max_recommended_working_set_size")
    return int(value) if isinstance(value, int) and value > 0 else None

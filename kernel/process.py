"""Is a process we started (or an earlier app started) still that same live process?

Training jobs and the Evaluate tab's background runs keep a pid and the process's start time: after a
restart a pid may belong to another process, and an exited child awaiting its parent is not alive.
"""
from __future__ import annotations

import psutil


def process_create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def process_alive(pid: int | None, started: float | None) -> bool:
    """Alive and the same process: an exited one awaiting its parent (zombie) or a reused pid is not."""
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) < 0.05
    except psutil.Error:
        return False

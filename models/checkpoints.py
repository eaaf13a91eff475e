"""Which training checkpoints to unload. A run keeps many `run@N` checkpoints, each loaded on its first
use; at most a few stay in memory (the least recently used goes first), one unused for a while goes at
the next request, and every idle one goes when memory runs short. Never one that rows are streaming
from. The engine decides nothing else about them: it applies this choice under its own lock.
"""
from __future__ import annotations

import os
from collections import Counter

from .adapters import AdapterInfo

CHECKPOINT_IDLE_S = 600.0  # a checkpoint unused this long is unloaded at the next request
MIN_FREE_FRACTION = 0.1  # below this share of free memory, loading a checkpoint unloads idle ones first


def to_unload(loaded: list[AdapterInfo], in_use: Counter, limit: int, now: float,
              memory_is_short: bool) -> list[AdapterInfo]:
    """The loaded checkpoints (other than the one about to be used) to unload, least recently used first."""
    idle = sorted((a for a in loaded if not in_use[a.name]), key=lambda a: a.last_used)
    excess = len(loaded) + 1 - limit
    chosen = []
    for info in idle:
        if excess > 0 or memory_is_short or now - info.last_used > CHECKPOINT_IDLE_S:
            chosen.append(info)
            excess -= 1
    return chosen


def memory_short(device) -> bool:
    """Less than MIN_FREE_FRACTION of the device's memory (the machine's, on a CPU) is free."""
    try:
        if device.type == "cuda":
            import torch

            free, total = torch.cuda.mem_get_info(device)
        else:
            free, total = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PHYS_PAGES")
        return free < MIN_FREE_FRACTION * total
    except (OSError, ValueError, RuntimeError, AttributeError):
        return False

"""Will a training job fit beside the chat? A rough memory estimate checked before a job starts on a GPU."""
from __future__ import annotations

import torch

from kernel.errors import ArenaError

from .config import TrainConfig

BYTES_PER_PARAM = {"qlora": 0.7, "lora": 2.0, "rslora": 2.0, "dora": 2.2}  # bf16 weights; 4-bit for QLoRA
MARGIN = 1.5 * 2**30  # activations, optimiser state of the small LoRA weights, CUDA context


def estimate_bytes(cfg: TrainConfig, parameters: int) -> int:
    return int(parameters * BYTES_PER_PARAM[cfg.method] + MARGIN)


def verdict(free_bytes: int, need_bytes: int) -> str:
    """'' when it fits, else the reason the job is refused."""
    if free_bytes >= need_bytes:
        return ""
    return (f"not enough GPU memory for this job: {free_bytes / 2**30:.1f} GiB free, about "
            f"{need_bytes / 2**30:.1f} GiB needed; unload adapters, use QLoRA, or train when the chat is idle")


def check_device_memory(cfg: TrainConfig, engine) -> None:
    """On CUDA, refuse a job that would not fit in the free memory; CPU jobs are not checked."""
    if not torch.cuda.is_available():
        return
    free, _ = torch.cuda.mem_get_info()
    reason = verdict(free, estimate_bytes(cfg, engine.base_parameters))
    if reason:
        raise ArenaError(reason)

"""Which number format to run in, and the device's defaults (rows at once, KV budget).

On CUDA: bf16. On a CPU it depends on the chip. Measured on this project's 2-core EPYC (AVX512-BF16,
no AMX), with this backend's own decode loop on the default model: one row 40 ms a step in bf16
against 50 in fp32, 16 rows 64 against 93 ms, and a 16-row prefill 0.53 against 0.91 s; a lone
bf16 matmul at 16 rows 1.7-2x faster. Without bf16 instructions PyTorch emulates bf16 and it is
slower than fp32. So `auto` takes bf16 on a CPU that has them (avx512_bf16 or amx_bf16) and fp32
elsewhere. A timing at start was tried and dropped: on a shared machine it flipped between runs,
and answers would change with it. `--dtype` forces a choice. The reference backend keeps fp32 on
the CPU: its attention path is slow in bf16 there.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..backend import forced_dtype

CPU_ROWS, CUDA_ROWS = 16, 32
CPU_KV_MB = 1024


def choose_dtype(requested: str, device: str | None, batched: bool) -> tuple[torch.dtype | None, str]:
    """(dtype to load in, a note for the Models tab); None leaves load_base's default."""
    if requested != "auto":
        return forced_dtype(requested), ""
    on_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if on_cuda or not batched:
        return None, ""
    if cpu_has_bf16():
        return torch.bfloat16, "bfloat16: this CPU has bf16 instructions, and batched rows run faster in it"
    return torch.float32, "float32: this CPU has no bf16 instructions"


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def default_rows(device: torch.device) -> int:
    return CUDA_ROWS if device.type == "cuda" else CPU_ROWS


def default_kv_mb(device: torch.device, rows: int, context: int, per_token: int) -> int:
    """CPU: 1 GB. CUDA: every row its full context, but at most 40% of the memory still free."""
    if device.type != "cuda":
        return CPU_KV_MB
    free, _ = torch.cuda.mem_get_info(device)
    want = rows * context * per_token
    return max(64, int(min(want, 0.4 * free)) // 2**20)

"""Which number format to run in, and what the device's defaults are (rows, KV budget, graphs).

On CUDA: bf16. On a CPU the answer depends on the chip: with AVX512-BF16 or AMX, bf16 matmuls
beat fp32 (on this project's 2-core EPYC the decode step of 16 rows took 64 ms in bf16 against
93 ms in fp32, and one row 40 against 50 ms), elsewhere bf16 is emulated and slow. So on a CPU
with bf16 instructions `auto` times one layer-sized matmul both ways at 1 and 16 rows and takes
bf16 only when it wins at both; `--dtype` forces a choice. The reference backend keeps fp32 on
the CPU: its attention path is slow in bf16 there.
"""
from __future__ import annotations

import time
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
    if not cpu_has_bf16():
        return torch.float32, "float32: this CPU has no bf16 instructions"
    fp32, bf16 = _matmul_ms(torch.float32), _matmul_ms(torch.bfloat16)
    ratio = " / ".join(f"{a / b:.1f}x" for a, b in zip(fp32, bf16))
    if all(b < a for a, b in zip(fp32, bf16)):
        return torch.bfloat16, f"bfloat16 chosen: matmuls {ratio} faster than float32 at 1 / 16 rows on this CPU"
    return torch.float32, f"float32 chosen: bfloat16 matmuls were not faster on this CPU ({ratio})"


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def _matmul_ms(dtype: torch.dtype, repeats: int = 8) -> tuple[float, float]:
    """Best time of a 2048x768 matmul at 1 and 16 rows (the best of a few resists other load)."""
    weight = torch.randn(2048, 768).to(dtype)
    times = []
    for rows in (1, 16):
        x = torch.randn(rows, 768).to(dtype)
        torch.nn.functional.linear(x, weight)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(4):
                torch.nn.functional.linear(x, weight)
            best = min(best, time.perf_counter() - start)
        times.append(best * 1000)
    return times[0], times[1]


def default_rows(device: torch.device) -> int:
    return CUDA_ROWS if device.type == "cuda" else CPU_ROWS


def default_kv_mb(device: torch.device, rows: int, context: int, per_token: int) -> int:
    """CPU: 1 GB. CUDA: every row its full context, but at most 40% of the memory still free."""
    if device.type != "cuda":
        return CPU_KV_MB
    free, _ = torch.cuda.mem_get_info(device)
    want = rows * context * per_token
    return max(64, int(min(want, 0.4 * free)) // 2**20)

"""The batched backend's KV cache: a fixed number of static slots, each one row's keys and values.

Why static slots and not paged blocks: paged attention only pays off with a kernel that reads the
blocks where they lie (vLLM's CUDA kernels). In plain PyTorch every step would first gather each
row's blocks into one tensor, a copy of the whole live cache per layer per step. Static slots let
SDPA read the cache in place (the decode batch is the first n slots, a view), give CUDA graphs
fixed addresses, and make admission trivial (a free slot or wait). The price is that each slot
reserves `slot_len` tokens whether a row uses them or not; the budget flag trades slots for length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernel.config import ArenaError

MIN_SLOT_LEN = 256  # shorter slots would refuse ordinary chat histories


@dataclass(frozen=True)
class CachePlan:
    slots: int
    slot_len: int

    def describe(self) -> str:
        return f"{self.slots} rows of up to {self.slot_len} tokens"


def bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def plan_cache(budget_mb: int, rows: int, context: int, per_token: int) -> CachePlan:
    """As many rows as asked, each as long as the budget allows up to the model's context."""
    budget_tokens = budget_mb * 2**20 // per_token
    slot_len = min(context, budget_tokens // rows)
    if slot_len < MIN_SLOT_LEN:  # too many rows for the budget: keep rows usable, serve fewer at once
        rows = max(1, budget_tokens // min(context, MIN_SLOT_LEN))
        slot_len = min(context, budget_tokens // rows)
    if slot_len < 16:
        raise ArenaError(f"--kv-budget-mb {budget_mb} is too small: one token of KV cache takes "
                         f"{per_token / 1024:.0f} KB here")
    if slot_len < context:
        slot_len -= slot_len % 64  # round shapes: fewer distinct attention sizes
    return CachePlan(rows, slot_len)


class KVCache:
    """Per layer one key and one value tensor [slots + 1, kv_heads, slot_len, head_dim]; slots handed out lowest first.

    The extra last slot is scratch: the unused rows of a decode batch write there, so that a
    captured decode step can always write every row without touching a slot in use.
    """

    def __init__(self, plan: CachePlan, layers: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        self.plan = plan
        shape = (plan.slots + 1, kv_heads, plan.slot_len, head_dim)
        try:
            # zeros, not empty: a dummy row of a decode batch reads position 0 of a free slot and must
            # see finite numbers, never stale NaN bit patterns.
            self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
            self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            need = 2 * layers * (plan.slots + 1) * plan.slot_len * kv_heads * head_dim * self._size(dtype)
            raise ArenaError(f"cannot allocate the KV cache ({need / 2**20:.0f} MB for {plan.describe()}): "
                             f"lower --kv-budget-mb or --max-batch ({str(exc).splitlines()[0][:120]})") from None
        self._free = list(range(plan.slots))

    @staticmethod
    def _size(dtype: torch.dtype) -> int:
        return torch.empty((), dtype=dtype).element_size()

    @property
    def slots(self) -> int:
        return self.plan.slots

    @property
    def scratch(self) -> int:
        return self.plan.slots

    @property
    def slot_len(self) -> int:
        return self.plan.slot_len

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def megabytes(self) -> float:
        return sum(t.numel() * t.element_size() for t in self.k + self.v) / 2**20

    def take(self) -> int | None:
        """The lowest free slot (keeps the decode batch, slots 0..n-1, short), or None when all are in use."""
        if not self._free:
            return None
        slot = min(self._free)
        self._free.remove(slot)
        return slot

    def give_back(self, slot: int) -> None:
        self._free.append(slot)

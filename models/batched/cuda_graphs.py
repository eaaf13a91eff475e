"""CUDA graphs of the decode step, captured at start for a few (rows, keys) buckets.

One decode step of a small model is hundreds of tiny kernels; launched from Python one by one the
GPU waits on the CPU (transformers + PEFT reached 2% of what memory bandwidth allows on an H100).
A captured graph replays all of them with one launch. Shapes inside a graph are fixed, so each
bucket is a (rows, key length) pair: a step runs the smallest bucket that holds it, unused rows
write to the cache's scratch slot, and LoRA always goes through the whole stack of (fixed-address)
adapter weights, so loading an adapter never needs a new capture. A step with a row whose adapter brings
its own lm_head/embed_tokens (own_modules.py) runs eagerly instead. Any failure to capture logs one line and
the loop stays eager.
"""
from __future__ import annotations

import logging

import torch

from .kv_cache import KVCache
from .llama import Batch, LlamaForward
from .lora import LoraBatch, LoraStacks

log = logging.getLogger(__name__)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
KEY_BUCKETS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


def buckets(limit: int, candidates: tuple[int, ...]) -> list[int]:
    return sorted({c for c in candidates if c < limit} | {limit})


class DecodeGraphs:
    def __init__(self, forward: LlamaForward, cache: KVCache, stacks: LoraStacks, device: torch.device):
        self.forward, self.cache, self.stacks, self.device = forward, cache, stacks, device
        self.rows = buckets(cache.slots, ROW_BUCKETS)
        self.keys = buckets(cache.slot_len, KEY_BUCKETS)
        most = self.rows[-1]
        long = dict(dtype=torch.long, device=device)
        # Static inputs: every graph reads a prefix of these, refilled before each replay.
        self.ids = torch.zeros(most, 1, **long)
        self.positions = torch.zeros(most, 1, **long)
        self.write_slots = torch.full((most,), cache.scratch, **long)
        self.write_positions = torch.zeros(most, **long)
        self.adapters = torch.zeros(most, **long)
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.failure = ""

    def capture(self) -> bool:
        """Capture every bucket; on failure keep none (eager decode) and remember why."""
        pool = torch.cuda.graph_pool_handle()
        try:
            with torch.inference_mode():
                for rows in reversed(self.rows):  # largest first: later graphs reuse its memory
                    for keys in reversed(self.keys):
                        self.graphs[(rows, keys)] = self._capture_one(rows, keys, pool)
        except Exception as exc:  # capture is fragile (dynamic RoPE, odd kernels): eager still works
            self.graphs.clear()
            self.failure = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            log.warning("CUDA graph capture failed, decoding eagerly: %s", self.failure)
            return False
        finally:
            self._reset_inputs()
        return True

    def _step(self, rows: int, keys: int) -> torch.Tensor:
        index = torch.arange(rows, device=self.device)
        batch = Batch(ids=self.ids[:rows], positions=self.positions[:rows], slots=index, kv_len=keys,
                      write_slots=self.write_slots[:rows], write_positions=self.write_positions[:rows],
                      write_rows=index, prefix=True, lora=LoraBatch(self.stacks, self.adapters[:rows], every_slot=True))
        return self.forward(batch, self.cache, index)

    def _capture_one(self, rows: int, keys: int, pool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        self._reset_inputs()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: allocator and kernel selection settle before capture
                self._step(rows, keys)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            logits = self._step(rows, keys)
        return graph, logits

    def _reset_inputs(self) -> None:
        """Warm-ups and captures must write only the scratch slot."""
        self.ids.zero_()
        self.positions.zero_()
        self.write_slots.fill_(self.cache.scratch)
        self.write_positions.zero_()
        self.adapters.zero_()

    def decode(self, rows: int, kv_len: int, ids, positions, write_slots, write_positions, adapters):
        """Logits [bucket rows, vocab] of one replayed step, or None when no bucket holds it."""
        row_bucket = next((r for r in self.rows if r >= rows), None)
        key_bucket = next((k for k in self.keys if k >= kv_len), None)
        entry = self.graphs.get((row_bucket, key_bucket))
        if entry is None:
            return None
        graph, logits = entry
        pad = row_bucket - rows
        self._fill(self.ids, ids + [0] * pad, (-1, 1))
        self._fill(self.positions, positions + [0] * pad, (-1, 1))
        self._fill(self.write_slots, write_slots + [self.cache.scratch] * pad)
        self._fill(self.write_positions, write_positions + [0] * pad)
        self._fill(self.adapters, adapters + [0] * pad)
        graph.replay()
        return logits

    def _fill(self, target: torch.Tensor, values: list[int], shape=(-1,)) -> None:
        source = torch.tensor(values, dtype=torch.long).view(*shape)
        target[:len(values)].copy_(source, non_blocking=True)

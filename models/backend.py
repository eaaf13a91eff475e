"""The seam between the engine and whatever runs the model.

`Engine` (models/engine.py) owns the adapter registry, prompts and checks; a `Backend` runs the
model: it streams answers for rows, scores continuations, and holds adapter weights. Two exist:
`HFBackend` (transformers generate + PEFT, the reference) and `BatchedBackend` (its own decode
loop shared by every caller, the default). `models.engine.make_backend` picks one from the EngineConfig.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Protocol

import torch

from kernel.config import SamplingParams

from .adapters import AdapterInfo
from .base import LoadedBase
from .quantization import weight_bytes
from .streaming import StreamEvent

BASE_ROW = "__base__"  # the adapter name of a row that wants the base model (PEFT's name too)


@dataclass
class Row:
    """One answer to produce: the caller's index, the variant asked for, its adapter and prompt."""

    index: int
    variant: str  # "base" or an adapter name, as the caller gave it
    adapter: str  # adapter name, or BASE_ROW
    prompt_ids: list[int]
    params: SamplingParams


@dataclass
class ScoreRow:
    """One continuation to score: sum of log-probabilities of `continuation_ids` after `prompt_ids`."""

    adapter: str
    prompt_ids: list[int]
    continuation_ids: list[int]


TokenScore = tuple[float, list[tuple[int, float]]]  # a token's log-probability, and (token, logprob) alternatives


class Backend(Protocol):
    name: str  # "batched" or "hf"
    base: LoadedBase

    @property
    def context_limit(self) -> int: ...  # longest prompt + answer one row may have

    @property
    def waiting(self) -> int: ...  # rows waiting for room right now

    def attach(self, info: AdapterInfo, replace: bool = False) -> str: ...  # '' when loaded, else why not

    def detach(self, name: str) -> None: ...

    def serving(self, name: str) -> str: ...  # which path serves an attached adapter, and why

    def stream(self, rows: list[Row], cancel: threading.Event | None) -> Iterator[StreamEvent]: ...

    def loglikelihood(self, rows: list[ScoreRow], cancel: threading.Event | None) -> list[float]: ...

    # Each continuation token's log-probability with the `top` likeliest tokens at its place (echo + logprobs).
    def token_logprobs(self, row: ScoreRow, top: int, cancel: threading.Event | None) -> list[TokenScore]: ...

    def info(self) -> dict: ...

    def close(self) -> None: ...


def drain(events: queue.Queue) -> Iterator[StreamEvent]:
    """Yield what a worker puts on the queue until None; raise the error it reports instead."""
    while True:
        event = events.get()
        if event is None:
            return
        if isinstance(event, BaseException):
            raise event
        yield event


class Either:
    """An Event-like view that is set when either of two events is set."""

    def __init__(self, a: threading.Event, b: threading.Event | None):
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return self.a.is_set() or (self.b is not None and self.b.is_set())

    def set(self) -> None:
        self.a.set()


def forced_dtype(name: str) -> torch.dtype | None:
    """The dtype --dtype names, or None for auto (load_base's default: bf16 on CUDA, fp32 on a CPU)."""
    return None if name == "auto" else getattr(torch, name)


def memory_mb(base: LoadedBase) -> float:
    if base.device.type == "cuda":
        return torch.cuda.memory_allocated(base.device) / 2**20
    return weight_bytes(base.model) / 2**20  # a quantised weight's absmax and scales count too


def top_tokens(logprobs: torch.Tensor, top: int) -> list[list[tuple[int, float]]]:
    """The `top` likeliest (token, log-probability) pairs of each row, most likely first."""
    if top <= 0:
        return [[] for _ in range(logprobs.shape[0])]
    values, tokens = logprobs.topk(top, dim=-1)
    return [list(zip(t, v)) for t, v in zip(tokens.tolist(), values.tolist())]

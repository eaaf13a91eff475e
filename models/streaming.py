"""Per-row token streaming out of one batched `generate` call, with timing per row.

transformers hands a streamer one token per row per step; each row is decoded on its own, stops
at its own end-of-sequence token, and is timed on its own, so a side-by-side view can stream
every column at once from one batch.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    queue_seconds: float = 0.0  # waiting for the device behind other callers
    ttft_seconds: float = 0.0  # from the start of generation to the first new token
    total_seconds: float = 0.0
    tokens_per_second: float = 0.0  # decoding speed after the first token
    finish_reason: str = ""  # stop (end of answer), length (max_new_tokens) or cancelled

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StreamEvent:
    """A piece of one row's answer; the last event of a row has done=True and its stats.

    While a row waits for room, events with an empty delta say where it stands: queue_position
    (1 = next) and queue_seconds so far. Once it runs, queue_position is 0.
    """

    index: int  # position of the request in the call
    variant: str
    delta: str
    text: str
    done: bool = False
    stats: GenerationStats | None = None
    queue_position: int = 0
    queue_seconds: float = 0.0


class CancelCriteria(StoppingCriteria):
    """Ends every row of the batch at the next step once the event is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class RowStreamer(BaseStreamer):
    """Receives generate()'s tokens and emits one StreamEvent per row and step with new text."""

    def __init__(self, tokenizer, rows: list[tuple[int, str, int]], eos_ids: set[int],
                 emit: Callable[[StreamEvent], None], cancel: threading.Event, queue_seconds: float):
        self.tokenizer = tokenizer
        self.rows = rows  # (request index, variant, prompt tokens) per batch row
        self.eos_ids = eos_ids
        self.emit = emit
        self.cancel = cancel
        self.ids: list[list[int]] = [[] for _ in rows]
        self.text = ["" for _ in rows]
        self.done = [False for _ in rows]
        self.first = [0.0 for _ in rows]
        self.last = [0.0 for _ in rows]
        self.queue_seconds = queue_seconds
        self.start = time.perf_counter()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first passes the prompt itself
            self._prompt_seen = True
            return
        now = time.perf_counter()
        for row, token in enumerate(value.reshape(len(self.rows), -1)[:, -1].tolist()):
            if self.done[row]:
                continue
            if token in self.eos_ids:
                self._finish(row, "stop", now)
                continue
            self.ids[row].append(token)
            self.first[row] = self.first[row] or now
            self.last[row] = now
            self._emit_new_text(row)

    def end(self) -> None:
        now = time.perf_counter()
        reason = "cancelled" if self.cancel.is_set() else "length"
        for row in range(len(self.rows)):
            if not self.done[row]:
                self._finish(row, reason, now)

    def _emit_new_text(self, row: int) -> None:
        text = self.tokenizer.decode(self.ids[row], skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return  # half of a multi-byte character: wait for the rest
        if text.startswith(self.text[row]):
            delta = text[len(self.text[row]):]
        else:  # the tokenizer re-merged earlier text (rare): send the whole text again
            delta = text
        self.text[row] = text
        if delta:
            index, variant, _ = self.rows[row]
            self.emit(StreamEvent(index, variant, delta, text))

    def _finish(self, row: int, reason: str, now: float) -> None:
        self.done[row] = True
        index, variant, prompt_tokens = self.rows[row]
        new = len(self.ids[row])
        decode_time = self.last[row] - self.first[row]
        stats = GenerationStats(
            prompt_tokens=prompt_tokens, new_tokens=new, queue_seconds=self.queue_seconds,
            ttft_seconds=(self.first[row] - self.start) if new else 0.0,
            total_seconds=now - self.start,
            tokens_per_second=(new - 1) / decode_time if new > 1 and decode_time > 0 else 0.0,
            finish_reason=reason,
        )
        text = self.tokenizer.decode(self.ids[row], skip_special_tokens=True)
        delta = text[len(self.text[row]):] if text.startswith(self.text[row]) else ""
        self.text[row] = text
        self.emit(StreamEvent(index, variant, delta, text, done=True, stats=stats))

"""Per-row streaming: events, timing, and turning each row's tokens into text as they come.

Both backends emit the same events. `RowText` decodes one row's tokens incrementally (a few
tokens of context, not the whole answer, per step), holds back half characters and anything that
may be the start of a stop string, and cuts the answer where a stop string begins. `RowStreamer`
plugs it into transformers' generate for the reference backend.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    queue_seconds: float = 0.0  # waiting behind other callers before generation started
    ttft_seconds: float = 0.0  # from the start of generation to the first new token
    total_seconds: float = 0.0
    tokens_per_second: float = 0.0  # decoding speed after the first token
    finish_reason: str = ""  # stop (end of answer or a stop string), length (max_new_tokens) or cancelled

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
    token_ids: list[int] | None = field(default=None, repr=False)  # the answer's tokens, on the done event


class RowText:
    """One row's answer as text, built token by token."""

    CONTEXT = 4  # tokens decoded in front of the new ones, so word-initial spaces come out right

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""  # everything decoded so far
        self.sent = 0  # how much of text the caller has been given
        self._offset = 0  # ids before this are settled in self.text
        self.stopped = False

    def add(self, token: int) -> str:
        """Take one token; return the new text that is safe to show (may be empty)."""
        self.ids.append(token)
        start = max(0, self._offset - self.CONTEXT)
        before = self._decode(self.ids[start:self._offset])
        now = self._decode(self.ids[start:])
        if now.endswith("\ufffd") or not now.startswith(before):
            return ""  # half of a multi-byte character (or a re-merge): wait for more tokens
        self.text += now[len(before):]
        self._offset = len(self.ids)
        return self._release()

    def finish(self) -> str:
        """The last delta: everything not yet given (the full decode settles any re-merges)."""
        if not self.stopped:
            full = self._decode(self.ids)
            if full.startswith(self.text[:self.sent]):
                self.text = full
            self._cut_at_stop()
        delta = self.text[self.sent:]
        self.sent = len(self.text)
        return delta

    def _release(self) -> str:
        if self._cut_at_stop():
            safe = len(self.text)
        else:  # hold back a tail that could still become a stop string
            safe = len(self.text) - self._partial_stop_len()
        delta = self.text[self.sent:safe] if safe > self.sent else ""
        self.sent = max(self.sent, safe)
        return delta

    def _cut_at_stop(self) -> bool:
        hits = [i for i in (self.text.find(s, max(0, self.sent - len(s))) for s in self.stop) if i >= 0]
        if not hits:
            return False
        self.text = self.text[:min(hits)]
        self.stopped = True
        return True

    def _partial_stop_len(self) -> int:
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""


def row_stats(prompt_tokens: int, new_tokens: int, queue_seconds: float, start: float, first: float,
              last: float, reason: str) -> GenerationStats:
    decode_time = last - first
    return GenerationStats(
        prompt_tokens=prompt_tokens, new_tokens=new_tokens, queue_seconds=queue_seconds,
        ttft_seconds=(first - start) if new_tokens else 0.0, total_seconds=time.perf_counter() - start,
        tokens_per_second=(new_tokens - 1) / decode_time if new_tokens > 1 and decode_time > 0 else 0.0,
        finish_reason=reason,
    )


class CancelCriteria(StoppingCriteria):
    """Ends every row of the batch at the next step once the event is set (or every row has stopped)."""

    def __init__(self, event: threading.Event, finished: Callable[[], bool] = lambda: False):
        self.event = event
        self.finished = finished

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        stop = self.event.is_set() or self.finished()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class RowStreamer(BaseStreamer):
    """Receives generate()'s tokens and emits one StreamEvent per row and step with new text."""

    def __init__(self, tokenizer, rows: list[tuple[int, str, int]], eos_ids: set[int],
                 emit: Callable[[StreamEvent], None], cancel: threading.Event, queue_seconds: float,
                 stop: tuple[str, ...] = ()):
        self.rows = rows  # (request index, variant, prompt tokens) per batch row
        self.eos_ids = eos_ids
        self.emit = emit
        self.cancel = cancel
        self.texts = [RowText(tokenizer, stop) for _ in rows]
        self.done = [False for _ in rows]
        self.first = [0.0 for _ in rows]
        self.last = [0.0 for _ in rows]
        self.queue_seconds = queue_seconds
        self.start = time.perf_counter()
        self._prompt_seen = False

    @property
    def all_done(self) -> bool:
        return all(self.done)

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first passes the prompt itself
            self._prompt_seen = True
            return
        now = time.perf_counter()
        for row, token in enumerate(value.reshape(len(self.rows), -1)[:, -1].tolist()):
            if self.done[row]:
                continue
            if token in self.eos_ids:
                self._finish(row, "stop")
                continue
            text = self.texts[row]
            delta = text.add(token)
            self.first[row] = self.first[row] or now
            self.last[row] = now
            if text.stopped:
                self._finish(row, "stop", delta)
            elif delta:
                index, variant, _ = self.rows[row]
                self.emit(StreamEvent(index, variant, delta, text.text[:text.sent]))

    def end(self) -> None:
        reason = "cancelled" if self.cancel.is_set() else "length"
        for row in range(len(self.rows)):
            if not self.done[row]:
                self._finish(row, reason)

    def _finish(self, row: int, reason: str, delta: str = "") -> None:
        self.done[row] = True
        index, variant, prompt_tokens = self.rows[row]
        text = self.texts[row]
        delta += text.finish()
        stats = row_stats(prompt_tokens, len(text.ids), self.queue_seconds, self.start, self.first[row],
                          self.last[row], reason)
        self.emit(StreamEvent(index, variant, delta, text.text, done=True, stats=stats, token_ids=list(text.ids)))

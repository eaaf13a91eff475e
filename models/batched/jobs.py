"""What the scheduler works on: calls (one per stream or scoring request) and their jobs (one per row).

A `Call` is the caller's side: an event queue its iterator reads, and the cancel it watches. A
`Job` is one row inside the scheduler: its KV slot, adapter slot, prompt, sampler and answer
text, and the times its stats are made of. Jobs only ever change on the scheduler's thread.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from ..backend import Either, Row, ScoreRow, drain
from ..streaming import GenerationStats, RowText, StreamEvent, row_stats
from .sampler import RowSampler


class Call:
    """One caller's request: its jobs report into one queue; None on it means every job has finished."""

    def __init__(self, cancel: threading.Event | None, jobs: int):
        self.events: queue.Queue = queue.Queue()
        self.left = threading.Event()  # the caller closed its iterator (tab closed, broke out of the loop)
        self.cancel = Either(self.left, cancel)
        self.open = jobs
        self._count = threading.Lock()  # the loop thread and a reference relay both end jobs
        self.failed = False

    def emit(self, event) -> None:
        self.events.put(event)

    def job_done(self) -> None:
        with self._count:
            self.open -= 1
            last = self.open == 0
        if last and not self.failed:
            self.events.put(None)

    def fail(self, error: BaseException) -> None:
        """One line for the caller; the scheduler drops the call's other jobs."""
        if not self.failed:
            self.failed = True
            self.events.put(error)

    def read(self):
        """The caller's side: yield events until the end; raise what the scheduler reported."""
        try:
            yield from drain(self.events)
        finally:
            self.left.set()


@dataclass(eq=False)
class Job:
    call: Call
    row: Row | None = None  # a row to answer...
    score: ScoreRow | None = None  # ...or a continuation to score
    top: int = -1  # scoring: -1 keeps only the sum; n >= 0 keeps each token's score and n alternatives
    token_scores: list = field(default_factory=list)
    submitted: float = field(default_factory=time.perf_counter)
    slot: int = -1  # KV slot while admitted
    adapter_slot: int = 0  # index into the LoRA stacks (0 = base)
    fed: int = 0  # tokens of `tokens_in` already in the KV cache
    max_new: int = 0
    started: float = 0.0
    first: float = 0.0
    last: float = 0.0
    sampler: RowSampler | None = None
    text: RowText | None = None
    logprob: float = 0.0
    finished: bool = False
    told_place: int = 0  # the queue position last reported to the caller
    told_at: float = 0.0

    @property
    def adapter(self) -> str:
        return self.row.adapter if self.row is not None else self.score.adapter

    @property
    def tokens_in(self) -> list[int]:
        """What is prefilled: the prompt, or prompt + continuation for scoring."""
        if self.row is not None:
            return self.row.prompt_ids
        return self.score.prompt_ids + self.score.continuation_ids

    @property
    def prefilled(self) -> bool:
        return self.fed >= len(self.tokens_in)

    @property
    def generated(self) -> list[int]:
        return self.text.ids if self.text is not None else []

    @property
    def position(self) -> int:
        """Position of the last sampled token, the next one fed to the model."""
        return len(self.tokens_in) + len(self.generated) - 1

    def waiting_event(self, place: int, now: float) -> StreamEvent:
        return StreamEvent(self.row.index, self.row.variant, "", "", queue_position=place,
                           queue_seconds=now - self.submitted)

    def done_event(self, reason: str, delta: str = "") -> StreamEvent:
        row = self.row
        if self.text is None:  # never started (cancelled while waiting)
            stats = GenerationStats(prompt_tokens=len(row.prompt_ids), finish_reason=reason,
                                    queue_seconds=time.perf_counter() - self.submitted)
            return StreamEvent(row.index, row.variant, "", "", done=True, stats=stats, token_ids=[])
        delta += self.text.finish()
        stats = row_stats(len(row.prompt_ids), len(self.text.ids), self.started - self.submitted, self.started,
                          self.first, self.last, reason)
        return StreamEvent(row.index, row.variant, delta, self.text.text, done=True, stats=stats,
                           token_ids=list(self.text.ids))

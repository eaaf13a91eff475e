"""One chat turn answered by several columns at once: the logic under Compare and Arena.

Each column has its own variant, history and sampling settings; a turn sends the same user
message (with the same web-search sources, so the comparison stays fair) to every column through
one `Engine.stream` call and yields every column's partial answer as it grows.

A user message in a history may carry a `sent` key: the text the model was given in place of the
user's words (the web-search sources, then the question). Later turns send it again, so a
follow-up such as "tell me more about [2]" still has its sources; `shown_messages` is what the
chat displays and votes keep, the user's own words.
"""
from __future__ import annotations

import datetime
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

from kernel.config import SamplingParams
from kernel.errors import ArenaError
from models.engine import ChatRequest, Engine
from models.streaming import GenerationStats


@dataclass
class Column:
    variant: str
    history: list[dict] = field(default_factory=list)  # user/assistant messages; user ones may hold "sent"
    params: SamplingParams = field(default_factory=SamplingParams)
    stats: GenerationStats | None = None
    queue_position: int = 0  # while waiting for room on the device: 1 = next
    queue_seconds: float = 0.0
    started: float = 0.0  # time.perf_counter() when this turn was sent: the elapsed time shown while answering


def check_message(message: str, max_chars: int) -> str:
    text = (message or "").strip()
    if not text:
        raise ArenaError("type a message first")
    if len(text) > max_chars:
        raise ArenaError(f"the message is {len(text)} characters; the limit is {max_chars}")
    return text


def model_messages(history: list[dict]) -> list[dict]:
    """What the model is given for a history: each user message as it was sent (sources included)."""
    return [{"role": m["role"], "content": m.get("sent", m["content"])} for m in history]


def shown_messages(history: list[dict]) -> list[dict]:
    """The history as the user saw it, for the chat display and votes: the sources stay on the server."""
    return [{"role": m["role"], "content": m["content"]} for m in history]


def answer_turn(engine: Engine, columns: list[Column], message: str, *, system: str | None = None,
                sent: str | None = None, cancel: threading.Event | None = None) -> Iterator[list[Column]]:
    """Append the user message to every column and stream all answers; yields the columns as they grow.

    `sent`, when given, is what the model gets instead of `message` (web-search sources in front of
    the question); every column gets the same text, and it stays in the history for later turns.
    """
    user = {"role": "user", "content": message}
    if sent is not None:
        user["sent"] = sent
    started = time.perf_counter()
    for column in columns:
        column.history = column.history + [dict(user), {"role": "assistant", "content": ""}]
        column.stats, column.started = None, started
    requests = [ChatRequest(c.variant, model_messages(c.history[:-1]), system, c.params) for c in columns]
    for event in engine.stream(requests, cancel):
        column = columns[event.index]
        column.queue_position, column.queue_seconds = event.queue_position, event.queue_seconds
        if event.queue_position:  # still waiting for room: only its place in line changed
            yield columns
            continue
        column.history[-1] = {"role": "assistant", "content": event.text}
        if event.done:
            column.stats = event.stats
        yield columns


def drop_last_turn(columns: list[Column]) -> str | None:
    """For Regenerate: remove the last user message (and what it sent) and answer everywhere; return its words."""
    message = None
    for column in columns:
        while column.history and column.history[-1]["role"] == "assistant":
            column.history = column.history[:-1]
        if column.history and column.history[-1]["role"] == "user":
            message = column.history[-1]["content"]
            column.history = column.history[:-1]
    return message


def stats_line(column: Column) -> str:
    """Under a column: its place in line while it waits, the time so far while it answers, then how it went."""
    if column.queue_position:
        return (f"waiting for room on the device: {ordinal(column.queue_position)} in line · "
                f"{column.queue_seconds:.0f} s so far")
    stats = column.stats
    if stats is None:
        return f"answering… {time.perf_counter() - column.started:.0f} s" if column.started else ""
    if stats.finish_reason == "cancelled" and not stats.new_tokens:
        return "stopped"
    tail = {"length": " · hit max tokens", "cancelled": " · stopped"}.get(stats.finish_reason, "")
    waited = f"waited {stats.queue_seconds:.1f} s · " if stats.queue_seconds >= 0.05 else ""
    return (f"{waited}first token {stats.ttft_seconds:.2f} s · {stats.new_tokens} tokens · "
            f"{stats.tokens_per_second:.1f} tok/s · {stats.queue_seconds + stats.total_seconds:.1f} s in all{tail}")


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"



def today() -> datetime.date:
    return datetime.date.today()

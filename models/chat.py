"""One chat turn answered by several columns at once: the logic under Compare and Arena.

Each column has its own variant, history and sampling settings; a turn sends the same user
message (with the same web-search sources, so the comparison stays fair) to every column through
one `Engine.stream` call and yields every column's partial answer as it grows.
"""
from __future__ import annotations

import datetime
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .config import ArenaError, SamplingParams
from .engine import ChatRequest, Engine
from .streaming import GenerationStats


@dataclass
class Column:
    variant: str
    history: list[dict] = field(default_factory=list)  # what the chat shows: user/assistant messages
    params: SamplingParams = field(default_factory=SamplingParams)
    stats: GenerationStats | None = None


def check_message(message: str, max_chars: int) -> str:
    text = (message or "").strip()
    if not text:
        raise ArenaError("type a message first")
    if len(text) > max_chars:
        raise ArenaError(f"the message is {len(text)} characters; the limit is {max_chars}")
    return text


def answer_turn(engine: Engine, columns: list[Column], message: str, *, system: str | None = None,
                augment: Callable[[list[dict]], list[dict]] | None = None,
                cancel: threading.Event | None = None) -> Iterator[list[Column]]:
    """Append the user message to every column and stream all answers; yields the columns as they grow.

    `augment`, when given, rewrites the messages sent to the model (web-search sources put in
    front of the question); every column gets the same rewrite, and the shown history keeps the
    user's own words.
    """
    for column in columns:
        column.history = column.history + [{"role": "user", "content": message},
                                           {"role": "assistant", "content": ""}]
        column.stats = None
    requests = [
        ChatRequest(c.variant, augment(c.history[:-1]) if augment else c.history[:-1], system, c.params)
        for c in columns
    ]
    for event in engine.stream(requests, cancel):
        column = columns[event.index]
        column.history[-1] = {"role": "assistant", "content": event.text}
        if event.done:
            column.stats = event.stats
        yield columns


def drop_last_turn(columns: list[Column]) -> str | None:
    """For Regenerate: remove the last user message and answer everywhere; return that message."""
    message = None
    for column in columns:
        while column.history and column.history[-1]["role"] == "assistant":
            column.history = column.history[:-1]
        if column.history and column.history[-1]["role"] == "user":
            message = column.history[-1]["content"]
            column.history = column.history[:-1]
    return message


def stats_line(stats: GenerationStats | None) -> str:
    if stats is None:
        return ""
    if stats.finish_reason == "cancelled" and not stats.new_tokens:
        return "stopped"
    tail = {"length": " · hit max tokens", "cancelled": " · stopped"}.get(stats.finish_reason, "")
    return (f"first token {stats.ttft_seconds:.2f} s · {stats.new_tokens} tokens · "
            f"{stats.tokens_per_second:.1f} tok/s{tail}")


def today() -> datetime.date:
    return datetime.date.today()

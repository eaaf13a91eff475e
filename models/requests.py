"""What callers hand the engine and get back: a chat request, a continuation to score, an answer."""
from __future__ import annotations

from dataclasses import dataclass, field

from kernel.config import SamplingParams

from .streaming import GenerationStats


@dataclass
class ChatRequest:
    variant: str
    messages: list[dict] | str
    system: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    prompt_ids: list[int] | None = None  # raw prompt tokens, no chat template (the API's /v1/completions)


@dataclass
class Continuation:
    text: str
    logprob: float  # sum over the continuation's tokens
    tokens: int


@dataclass
class ScoreRequest:
    """One continuation to score: its log-probability as `variant`'s answer after `messages`."""

    variant: str
    messages: list[dict] | str
    continuation: str
    system: str | None = None


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the likeliest tokens at this position, most likely first


@dataclass
class Answer:
    variant: str
    text: str
    stats: GenerationStats

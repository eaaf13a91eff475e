"""Per-row sampling: each row of a batch has its own temperature, top-p, top-k, repetition penalty and seed.

The steps and their order are transformers' (repetition penalty, then temperature, top-k, top-p),
so a greedy row picks what `generate` would pick. Each sampled row draws from its own
torch.Generator: a seeded row gets the same tokens whoever shares its batch.
"""
from __future__ import annotations

import random

import torch

from kernel.config import SamplingParams


class RowSampler:
    """The sampling state of one row: its settings, its random generator and the ids it has seen."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int], device: torch.device):
        self.params = params
        self.generator = None
        if not params.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(params.seed if params.seed is not None else random.randrange(2**63))
        self.seen = torch.tensor(prompt_ids, dtype=torch.long, device=device)  # for the repetition penalty
        self.device = device

    def add(self, token: int) -> None:
        if self.params.repetition_penalty != 1.0:
            self.seen = torch.cat([self.seen, torch.tensor([token], device=self.device)])

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """One token id (a 0-d tensor) from this row's logits [vocab]."""
        p = self.params
        scores = logits.float()
        if p.repetition_penalty != 1.0:
            picked = scores[self.seen]
            scores = scores.scatter(0, self.seen, torch.where(picked < 0, picked * p.repetition_penalty,
                                                               picked / p.repetition_penalty))
        if p.greedy:
            return scores.argmax()
        scores = scores / p.temperature
        if p.top_k:
            kth = torch.topk(scores, min(p.top_k, scores.shape[-1])).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_scores, order = torch.sort(scores)
            drop = sorted_scores.softmax(-1).cumsum(-1) <= 1 - p.top_p
            drop[-1] = False  # keep at least one token
            scores = scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
        return torch.multinomial(scores.softmax(-1), 1, generator=self.generator)[0]


def pick_tokens(samplers: list[RowSampler], logits: torch.Tensor) -> list[int]:
    """Next token of every row; rows that are plain greedy share one argmax."""
    plain = [i for i, s in enumerate(samplers) if s.params.greedy and s.params.repetition_penalty == 1.0]
    picked: list[torch.Tensor | None] = [None] * len(samplers)
    if plain:
        best = logits[plain].argmax(-1)
        for j, i in enumerate(plain):
            picked[i] = best[j]
    for i, sampler in enumerate(samplers):
        if picked[i] is None:
            picked[i] = sampler.pick(logits[i])
    return torch.stack(picked).tolist()

"""The reference backend's inside: turn rows (prompt ids + adapter) into one batched `generate` call."""
from __future__ import annotations

import threading
from typing import Callable

import torch
from transformers import GenerationConfig, StoppingCriteriaList

from kernel.config import SamplingParams

from .backend import Row, top_tokens
from .streaming import CancelCriteria, RowStreamer, StreamEvent


class HFRunner:
    """Runs rows through transformers' generate with PEFT mixed-adapter batches."""

    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device):
        self.base_model = model
        self.tokenizer = tokenizer
        self.device = device
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> set[int]:
        ids = set()
        for source in (self.base_model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        return ids

    def run(self, rows: list[Row], params: SamplingParams, peft_model, emit: Callable[[StreamEvent], None],
            cancel: threading.Event, queue_seconds: float = 0.0, mixed: bool = True) -> None:
        """Generate for all rows at once. mixed=False: the caller has set the adapter (or turned LoRA off)."""
        input_ids, attention_mask = self._left_pad([row.prompt_ids for row in rows])
        kwargs = {}
        model = self.base_model
        if peft_model is not None:
            model = peft_model
            if mixed:
                kwargs["adapter_names"] = [row.adapter for row in rows]
        streamer = RowStreamer(
            self.tokenizer, [(r.index, r.variant, len(r.prompt_ids)) for r in rows],
            self.eos_ids, emit, cancel, queue_seconds, params.stop,
        )
        if params.seed is not None:
            torch.manual_seed(params.seed)
        with torch.inference_mode():
            model.generate(
                input_ids=input_ids, attention_mask=attention_mask,
                generation_config=self._generation_config(params),
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([CancelCriteria(cancel, lambda: streamer.all_done)]),
                **kwargs,
            )

    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        """Sum of log-probabilities of each continuation's tokens after its prompt, in one padded forward pass."""
        sequences = [prompt + continuation for prompt, continuation in pairs]
        width = max(len(r) for r in sequences)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in sequences], device=self.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in sequences], device=self.device)
        with torch.inference_mode():
            logits = self.base_model(input_ids=ids, attention_mask=mask).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        scores = []
        for row, (prompt, continuation) in enumerate(pairs):
            # the token at position p is predicted by the logits at p - 1
            positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(continuation), device=self.device)
            targets = torch.tensor(continuation, device=self.device)
            scores.append(float(logprobs[row, positions, targets].sum()))
        return scores

    def token_logprobs(self, prompt: list[int], continuation: list[int], top: int = 0) -> list[tuple]:
        """(log-probability, top alternatives) of each continuation token after what precedes it: one forward pass."""
        ids = prompt + continuation
        with torch.inference_mode():
            logits = self.base_model(input_ids=torch.tensor([ids], device=self.device)).logits[0].float()
        logprobs = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)  # position p predicts token p + 1
        targets = torch.tensor(continuation, device=self.device)
        chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
        return list(zip(chosen, top_tokens(logprobs, top)))

    def _left_pad(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = [[pad] * (width - len(p)) + p for p in prompts]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        return (torch.tensor(ids, device=self.device), torch.tensor(mask, device=self.device))

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        sampling = {}
        if not params.greedy:
            sampling = dict(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        return GenerationConfig(
            max_new_tokens=params.max_new_tokens, do_sample=not params.greedy,
            repetition_penalty=params.repetition_penalty, eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.tokenizer.pad_token_id, **sampling,
        )


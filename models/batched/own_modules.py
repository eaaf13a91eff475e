"""Whole modules an adapter brings into the batched loop, used for that adapter's rows only.

An adapter may carry a trained copy of lm_head or embed_tokens (PEFT's modules_to_save) or LoRA on
embed_tokens. Such pieces cannot join the stacked LoRA matmuls, so each stack slot keeps its own
(`OwnModules`), and a forward pass groups its rows by adapter (`ModuleRows`): the rows of an adapter
with an embedding copy look their tokens up in it, and the logits of rows with a head copy come from
that copy; every other row uses the base's modules, computed once for all of them. A head copy is
vocab x hidden (SmolLM2: ~113 MB in fp32), held from attach to detach only.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F


@dataclass
class OwnModules:
    """One adapter's own pieces (None = the base's). The embedding LoRA's scaling is folded into embed_b."""

    head: torch.Tensor | None = None  # [vocab, hidden] trained lm_head copy
    embed: torch.Tensor | None = None  # [vocab, hidden] trained embed_tokens copy
    embed_a: torch.Tensor | None = None  # [vocab, r] lora_embedding_A transposed: one row per token
    embed_b: torch.Tensor | None = None  # [hidden, r] lora_embedding_B times the adapter's scaling

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    @property
    def megabytes(self) -> float:
        return sum(t.numel() * t.element_size() for t in self._tensors().values()) / 2**20

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def to(self, dtype: torch.dtype, device: torch.device) -> OwnModules:
        return OwnModules(**{name: t.to(device=device, dtype=dtype) for name, t in self._tensors().items()})

    def mismatch(self, vocab: int, hidden: int) -> str:
        """'' when every piece fits a base of this vocabulary and width, else why not."""
        for name, expected in (("head", (vocab, hidden)), ("embed", (vocab, hidden))):
            tensor = getattr(self, name)
            if tensor is not None and tuple(tensor.shape) != expected:
                module = "lm_head" if name == "head" else "embed_tokens"
                return f"its {module} copy is {tuple(tensor.shape)}, the base's is {expected}"
        if self.embed_a is not None and (self.embed_a.shape[0] != vocab or self.embed_b.shape[0] != hidden):
            return f"its embed_tokens LoRA is for {self.embed_a.shape[0]} tokens of width {self.embed_b.shape[0]}"
        return ""


def own_modules(copies: dict[str, torch.Tensor], embed_lora: dict[str, torch.Tensor], scale: float) -> OwnModules:
    """From module_copies.split_copies' copies and the lora_embedding_A/B pair (keys 'A', 'B') of one adapter."""
    modules = OwnModules(head=copies.get("lm_head"), embed=copies.get("embed_tokens"))
    if embed_lora:
        modules.embed_a = embed_lora["A"].t().contiguous()
        modules.embed_b = embed_lora["B"] * scale
    return modules


class ModuleRows:
    """The rows of one forward pass whose adapter brings its own modules, grouped by adapter."""

    def __init__(self, groups: list[tuple[torch.Tensor, OwnModules]]):
        self.groups = groups  # (batch-row indices, that adapter's modules)

    @classmethod
    def of(cls, modules: dict[int, OwnModules], per_row: list[int], device: torch.device) -> ModuleRows | None:
        """None when no row's slot has modules of its own (the common case costs nothing)."""
        groups = []
        for slot in sorted(set(per_row) & set(modules)):
            rows = [i for i, s in enumerate(per_row) if s == slot]
            groups.append((torch.tensor(rows, dtype=torch.long, device=device), modules[slot]))
        return cls(groups) if groups else None

    def embed(self, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x = the base's embeddings of ids [B, T]; the grouped rows get their adapter's instead."""
        for rows, own in self.groups:
            if own.embed is not None:
                x[rows] = F.embedding(ids[rows], own.embed)
            if own.embed_a is not None:
                x[rows] += F.linear(F.embedding(ids[rows], own.embed_a), own.embed_b).to(x.dtype)
        return x

    def head(self, x: torch.Tensor, base_head: torch.Tensor, kept_rows: torch.Tensor) -> torch.Tensor:
        """Logits of x [N, hidden], whose entries come from batch rows kept_rows [N]: each with its row's head."""
        heads = [(torch.isin(kept_rows, rows), own.head) for rows, own in self.groups if own.head is not None]
        if not heads:
            return F.linear(x, base_head)
        logits = x.new_empty(x.shape[0], base_head.shape[0])
        rest = torch.ones_like(kept_rows, dtype=torch.bool)
        for mask, head in heads:
            logits[mask] = F.linear(x[mask], head)
            rest &= ~mask
        logits[rest] = F.linear(x[rest], base_head)
        return logits

"""Whole modules an adapter carries beside its LoRA matrices, and serving them for that adapter's rows only.

PEFT's `modules_to_save` saves a full trained copy of a module (here: `lm_head`, `embed_tokens`),
and LoRA on `embed_tokens` saves the base embedding beside it. Left to PEFT, a copy wraps the
shared module for every adapter: mixed batches then fail for every adapter without a copy, and
LoRA can no longer target the wrapped embedding. So the backends take the copies out of PEFT's
hands: PEFT gets the LoRA part only, and the copy replaces the module while that adapter's rows run.
"""
from __future__ import annotations

import contextlib
import re

import torch

COPYABLE = ("embed_tokens", "lm_head")  # the modules whose copies the backends can swap in per adapter
_COPY = re.compile(r"^(?:base_model\.model\.)?(?:model\.)?(?P<module>embed_tokens|lm_head)"
                   r"(?:\.modules_to_save(?:\.[^.]+)?)?\.weight$")
# LoRA on an embedding saves the base embedding too (in case tokens were added): not a trained copy.
_SAVED_BASE = re.compile(r"^(?:base_model\.model\.)?(?:model\.)?(?:embed_tokens|lm_head)\.base_layer\.weight$")
_LORA_PART = re.compile(r"\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(\.|$)")


def split_copies(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the LoRA weights PEFT loads, {module: its trained copy}); saved base embeddings are dropped."""
    lora, copies = {}, {}
    for key, tensor in state.items():
        match = _COPY.match(key)
        if match:
            copies[match["module"]] = tensor
        elif not _SAVED_BASE.match(key):
            lora[key] = tensor
    return lora, copies


def carried(header: dict) -> dict[str, float]:
    """{module: MB} of every tensor in an adapter file beyond LoRA matrices (what --list and the Models tab show)."""
    sizes: dict[str, float] = {}
    for key, entry in header.items():
        if _LORA_PART.search(key):
            continue
        module = re.sub(r"^(?:base_model\.model\.)?(?:model\.)?", "", key)
        module = re.sub(r"(\.modules_to_save(\.[^.]+)?)?\.(weight|bias)$", "", module)
        sizes[module] = sizes.get(module, 0.0) + (entry.end - entry.start) / 2**20
    return sizes


def describe(sizes: dict[str, float]) -> str:
    return ", ".join(f"{module} {mb:.1f} MB" for module, mb in sorted(sizes.items()))


def vocabulary_reason(header: dict, model: torch.nn.Module) -> str:
    """'' when every saved embedding/head fits the base's vocabulary, else a one-line reason."""
    vocab = model.get_input_embeddings().weight.shape[0]
    for key, entry in header.items():
        if (_COPY.match(key) or _SAVED_BASE.match(key)) and entry.shape[0] != vocab:
            module = "lm_head" if "lm_head" in key else "embed_tokens"
            return (f"saves {module} for a vocabulary of {entry.shape[0]} tokens, the base has {vocab} "
                    "(tokens were added in training); adapters that bring their own tokenizer are not served yet")
    return ""


def module_of(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The base module a copy replaces, inside any PEFT wrapper around it."""
    module = model.get_input_embeddings() if name == "embed_tokens" else model.get_output_embeddings()
    while isinstance(getattr(module, "base_layer", None), torch.nn.Module):
        module = module.base_layer
    return module


@contextlib.contextmanager
def swapped_in(model: torch.nn.Module, copies: dict[str, torch.Tensor]):
    """The copies replace their modules' weights for the duration; the base's own come back after.

    The weight attribute is rebound, never written into: a tied head and embedding share one tensor,
    and a copy of one must not change the other.
    """
    saved = []
    try:
        for name, copy in copies.items():
            module = module_of(model, name)
            saved.append((module, module.weight))
            module.weight = torch.nn.Parameter(copy, requires_grad=False)
        yield
    finally:
        for module, weight in reversed(saved):
            module.weight = weight

"""Every loaded LoRA adapter at once, so each row of one batch can use its own (Punica/S-LoRA "BGMV").

Per target module the A and B matrices of all adapters are stacked, padded to the largest rank,
as [layers, slots, rank, in] and [layers, slots, out, rank]; slot 0 stays all zeros and is what
base rows use. A forward pass gathers each row's A and B by its slot index and applies them in
one batched matmul per module, with each adapter's own scaling (alpha / r, or alpha / sqrt(r) for
rsLoRA). Loading an adapter copies its weights into a free slot between two decode steps.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..adapters import CONFIG_FILE, WEIGHTS_FILE

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\."
                  r"(" + "|".join(MODULES) + r")\.lora_([AB])(?:\.[^.]+)?\.weight$")
# LoraConfig fields that change what a forward pass computes beyond plain A/B products.
_UNSERVED = {
    "use_dora": "DoRA", "rank_pattern": "per-module ranks (rank_pattern)", "alpha_pattern": "per-module alphas",
    "modules_to_save": "fully trained modules (modules_to_save)", "lora_bias": "a bias on lora_B",
    "layer_replication": "layer replication", "trainable_token_indices": "trained token embeddings",
    "alora_invocation_tokens": "activated LoRA", "target_parameters": "LoRA on raw parameters",
    "fan_in_fan_out": "fan_in_fan_out weights", "use_qalora": "QALoRA", "use_bdlora": "BD-LoRA",
    "arrow_config": "Arrow routing", "kasa_config": "KaSA", "velora_config": "VeLoRA",
}


@dataclass
class LoraWeights:
    """One adapter read from disk: A and B per (module, layer), and its scaling."""

    rank: int
    scale: float
    tensors: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]]

    @property
    def parameters(self) -> int:
        return sum(a.numel() + b.numel() for a, b in self.tensors.values())


def read_lora(folder: Path, layers: int) -> LoraWeights | str:
    """The adapter's weights, or the reason the batched loop cannot serve it (then the reference path does)."""
    from safetensors.torch import load_file

    config = json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    for key, what in _UNSERVED.items():
        if config.get(key):
            return f"{what} is served by the reference path"
    if config.get("bias", "none") != "none":
        return f"bias='{config['bias']}' adapters are served by the reference path"
    tensors: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(Path(folder) / WEIGHTS_FILE)).items():
        match = _KEY.match(key)
        if match is None:
            return f"weights outside the decoder's projections ({key}) are served by the reference path"
        layer, module, kind = int(match[1]), match[2], match[3]
        if layer >= layers:
            return f"{key}: layer {layer} does not exist in this base"
        tensors.setdefault((module, layer), {})[kind] = tensor
    if not tensors or any(set(pair) != {"A", "B"} for pair in tensors.values()):
        return "lora_A and lora_B do not come in pairs"
    ranks = {pair["A"].shape[0] for pair in tensors.values()}
    rank = config.get("r")
    if ranks != {rank}:  # PEFT refuses such a file; let it say so in its words
        return f"the weights' ranks {sorted(ranks)} differ from r={rank} in {CONFIG_FILE}"
    alpha = float(config.get("lora_alpha") or rank)
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return LoraWeights(rank, scale, {k: (p["A"], p["B"]) for k, p in tensors.items()})


class LoraStacks:
    """The stacked weights of all loaded adapters. fixed=True (CUDA graphs) never reallocates."""

    def __init__(self, shapes: dict[str, tuple[int, int]], layers: int, dtype: torch.dtype, device: torch.device,
                 slots: int = 4, rank: int = 8, fixed: bool = False):
        self.shapes = shapes  # module -> (in_features, out_features)
        self.layers, self.dtype, self.device, self.fixed = layers, dtype, device, fixed
        self.slots, self.rank = slots, rank
        self.a: dict[str, torch.Tensor] = {}
        self.b: dict[str, torch.Tensor] = {}
        self.scale = torch.zeros(slots, dtype=dtype, device=device)
        self.used: dict[int, str] = {}  # slot -> adapter name (slot 0, the base, is never listed)
        if fixed:  # every module up front, so captured graphs see every stack at a fixed address
            for module in shapes:
                self._allocate(module)

    def _allocate(self, module: str) -> None:
        fan_in, fan_out = self.shapes[module]
        self.a[module] = torch.zeros(self.layers, self.slots, self.rank, fan_in, dtype=self.dtype, device=self.device)
        self.b[module] = torch.zeros(self.layers, self.slots, fan_out, self.rank, dtype=self.dtype, device=self.device)

    def refusal(self, weights: LoraWeights) -> str:
        """Why this adapter does not fit a fixed-size stack ('' when it fits)."""
        if not self.fixed:
            return ""
        if weights.rank > self.rank:
            return f"rank {weights.rank} is above --max-lora-rank {self.rank}; served by the reference path"
        if len(self.used) >= self.slots - 1:
            return f"all {self.slots - 1} adapter slots (--max-loras) are in use; served by the reference path"
        return ""

    def add(self, name: str, weights: LoraWeights) -> int:
        """Copy an adapter into a free slot and return the slot. Call between forward passes."""
        self._grow(weights)
        slot = min(set(range(1, self.slots)) - set(self.used))
        with torch.no_grad():
            for (module, layer), (a, b) in weights.tensors.items():
                if module not in self.a:
                    self._allocate(module)
                rank = a.shape[0]
                self.a[module][layer, slot].zero_()
                self.b[module][layer, slot].zero_()
                self.a[module][layer, slot, :rank] = a.to(self.dtype)
                self.b[module][layer, slot, :, :rank] = b.to(self.dtype)
            self.scale[slot] = weights.scale
        self.used[slot] = name
        return slot

    def remove(self, slot: int) -> None:
        """Zero a slot so that nothing stale can ever reach a row, and make it free."""
        with torch.no_grad():
            for module in self.a:
                self.a[module][:, slot].zero_()
                self.b[module][:, slot].zero_()
            self.scale[slot] = 0
        self.used.pop(slot, None)

    def _grow(self, weights: LoraWeights) -> None:
        slots = self.slots if len(self.used) < self.slots - 1 else self.slots * 2
        rank = max(self.rank, weights.rank)
        if (slots, rank) == (self.slots, self.rank):
            return
        assert not self.fixed, "a fixed stack is checked with refusal() first"
        old_a, old_b, old_scale = dict(self.a), dict(self.b), self.scale
        self.slots, self.rank = slots, rank
        self.scale = torch.zeros(slots, dtype=self.dtype, device=self.device)
        self.scale[:old_scale.shape[0]] = old_scale
        for module in old_a:
            self._allocate(module)
            n, r = old_a[module].shape[1:3]
            self.a[module][:, :n, :r] = old_a[module]
            self.b[module][:, :n, :, :r] = old_b[module]


class LoraBatch:
    """The adapters of one forward pass's rows; apply() adds each row's LoRA output to a projection.

    The rows' A and B are gathered once for all layers (fast on a CPU), or layer by layer when
    per_layer is set (a captured CUDA graph then holds one layer's gathered copy, not all of them).
    """

    def __init__(self, stacks: LoraStacks, slots: torch.Tensor, distinct: set[int] | None = None,
                 per_layer: bool = False):
        self.stacks, self.slots, self.per_layer = stacks, slots, per_layer
        self.single = None
        if distinct is not None and len(distinct) == 1:  # every row the same adapter: plain matmuls
            self.single = next(iter(distinct))
            self.single_scale = float(stacks.scale[self.single])
            return
        self.scale = stacks.scale[slots].view(-1, 1, 1)
        if not per_layer:
            self.a = {m: t[:, slots] for m, t in stacks.a.items()}  # [layers, rows, rank, in]
            self.b = {m: t[:, slots].transpose(-1, -2) for m, t in stacks.b.items()}  # [layers, rows, rank, out]

    def apply(self, layer: int, module: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        stacked_a = self.stacks.a.get(module)
        if stacked_a is None:
            return y
        if self.single is not None:
            lora = F.linear(F.linear(x.to(stacked_a.dtype), stacked_a[layer, self.single]),
                            self.stacks.b[module][layer, self.single])
            return y + (lora * self.single_scale).to(y.dtype)
        if self.per_layer:
            a = stacked_a[layer][self.slots]
            b = self.stacks.b[module][layer][self.slots].transpose(-1, -2)
        else:
            a, b = self.a[module][layer], self.b[module][layer]
        lora = torch.bmm(torch.bmm(x.to(a.dtype), a.transpose(1, 2)), b)
        return y + (lora * self.scale).to(y.dtype)


def module_shapes(layer: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(in, out) of every LoRA-able projection of one decoder layer."""
    shapes = {}
    for parent in (layer.self_attn, layer.mlp):
        for name in MODULES:
            module = getattr(parent, name, None)
            if module is not None:
                module = getattr(module, "base_layer", module)  # under PEFT's wrapper, if one is there
                shapes[name] = (module.in_features, module.out_features)
    return shapes

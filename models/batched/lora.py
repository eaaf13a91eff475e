"""Every loaded LoRA adapter at once, so each row of one batch can use its own (the Punica/S-LoRA idea).

The forward pass fuses projections that read the same input (q/k/v, gate/up) into one matmul, and
the stacks follow those groups. Per group the A matrices of all adapters are stacked as
[layers, slots, members * rank, in] and the B matrices, block-diagonal per member and already
multiplied by the adapter's scaling (alpha / r, or alpha / sqrt(r) for rsLoRA), as
[layers, out, slots, members * rank]; ranks are padded to the largest, and slot 0 stays all zeros:
it is what base rows use. A mixed batch applies a group in two matmuls over the stacked slots:
x @ A_all^T, masked so each row keeps only its own adapter's columns, then @ B_all^T. That is each
row's own x @ A^T @ (scale B)^T, computed without copying any row's A and B: Punica's BGMV gathers
them per row, which on this CPU cost 9.5 ms per module and step at 16 rows against 2.6 ms for the
masked form (single thread). With more than 16 slots the batch first takes out the adapters its rows
use, so the cost follows the rows' adapters, not all loaded ones. A batch whose rows all want one
adapter uses its A and B directly. Loading an adapter copies its weights into a free slot between
two decode steps. An adapter's own lm_head/embed_tokens copies and embedding LoRA stay beside its
slot (own_modules.py), not in the stacks.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..adapters import CONFIG_FILE, WEIGHTS_FILE
from ..module_copies import COPYABLE, split_copies
from .own_modules import OwnModules, own_modules

GROUPS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gate_up": ("gate_proj", "up_proj"),
          "down": ("down_proj",)}  # projections fused into one matmul because they read the same input
MODULES = tuple(m for members in GROUPS.values() for m in members)
MEMBER = {m: (group, i) for group, members in GROUPS.items() for i, m in enumerate(members)}
_KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\."
                  r"(" + "|".join(MODULES) + r")\.lora_([AB])(?:\.[^.]+)?\.weight$")
_EMBED_KEY = re.compile(r"^(?:base_model\.model\.)?(?:model\.)?embed_tokens\.lora_embedding_([AB])(?:\.[^.]+)?$")
# LoraConfig fields that change what a forward pass computes beyond plain A/B products.
_UNSERVED = {
    "use_dora": "DoRA", "rank_pattern": "per-module ranks (rank_pattern)", "alpha_pattern": "per-module alphas",
    "lora_bias": "a bias on lora_B",
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
    modules: OwnModules = field(default_factory=OwnModules)  # its own lm_head/embed_tokens pieces, if any

    @property
    def parameters(self) -> int:
        lora = sum(a.numel() + b.numel() for a, b in self.tensors.values())
        embed = self.modules.embed_a
        return lora + (0 if embed is None else embed.numel() + self.modules.embed_b.numel())


def read_lora(folder: Path, layers: int) -> LoraWeights | str:
    """The adapter's weights, or the reason the batched loop cannot serve it (then the reference path does)."""
    from safetensors.torch import load_file

    config = json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    for key, what in _UNSERVED.items():
        if config.get(key):
            return f"{what} is served by the reference path"
    if config.get("bias", "none") != "none":
        return f"bias='{config['bias']}' adapters are served by the reference path"
    others = [m for m in config.get("modules_to_save") or [] if m.split(".")[-1] not in COPYABLE]
    if others:
        return (f"fully trained modules other than {' and '.join(COPYABLE)} ({others[0]}) "
                "are served by the reference path")
    state, copies = split_copies(load_file(str(Path(folder) / WEIGHTS_FILE)))
    tensors: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    embed_lora: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match, embedding = _KEY.match(key), _EMBED_KEY.match(key)
        if embedding:
            embed_lora[embedding[1]] = tensor
            continue
        if match is None:
            return f"weights outside the decoder's projections ({key}) are served by the reference path"
        layer, module, kind = int(match[1]), match[2], match[3]
        if layer >= layers:
            return f"{key}: layer {layer} does not exist in this base"
        tensors.setdefault((module, layer), {})[kind] = tensor
    pairs = [*tensors.values(), *([embed_lora] if embed_lora else [])]
    if not pairs or any(set(pair) != {"A", "B"} for pair in pairs):
        return "lora_A and lora_B do not come in pairs"
    ranks = {pair["A"].shape[0] for pair in pairs}
    rank = config.get("r")
    if ranks != {rank}:  # PEFT refuses such a file; let it say so in its words
        return f"the weights' ranks {sorted(ranks)} differ from r={rank} in {CONFIG_FILE}"
    alpha = float(config.get("lora_alpha") or rank)
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return LoraWeights(rank, scale, {k: (p["A"], p["B"]) for k, p in tensors.items()},
                       own_modules(copies, embed_lora, scale))


class LoraStacks:
    """The stacked weights of all loaded adapters, per projection group. fixed=True (CUDA graphs) never reallocates."""

    def __init__(self, shapes: dict[str, tuple[int, list[int]]], layers: int, dtype: torch.dtype,
                 device: torch.device, slots: int = 4, rank: int = 8, fixed: bool = False):
        self.shapes = shapes  # group -> (in_features, out_features of each member)
        self.layers, self.dtype, self.device, self.fixed = layers, dtype, device, fixed
        self.slots, self.rank = slots, rank
        self.a: dict[str, torch.Tensor] = {}
        self.b: dict[str, torch.Tensor] = {}
        self.used: dict[int, str] = {}  # slot -> adapter name (slot 0, the base, is never listed)
        self.modules: dict[int, OwnModules] = {}  # slot -> its adapter's own lm_head/embed_tokens pieces
        if fixed:  # every group up front, so captured graphs see every stack at a fixed address
            for group in shapes:
                self._allocate(group)

    def _allocate(self, group: str) -> None:
        fan_in, outs = self.shapes[group]
        width = len(outs) * self.rank
        self.a[group] = torch.zeros(self.layers, self.slots, width, fan_in, dtype=self.dtype, device=self.device)
        self.b[group] = torch.zeros(self.layers, sum(outs), self.slots, width, dtype=self.dtype, device=self.device)

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
                group, member = MEMBER[module]
                if group not in self.a:
                    self._allocate(group)
                rank, cols = a.shape[0], member * self.rank
                rows = sum(self.shapes[group][1][:member])
                self.a[group][layer, slot, cols:cols + rank] = a.to(self.dtype)
                scaled = (b * weights.scale).to(self.dtype)  # the scaling folded into B once, not per step
                self.b[group][layer, rows:rows + b.shape[0], slot, cols:cols + rank] = scaled
        if weights.modules:
            self.modules[slot] = weights.modules.to(self.dtype, self.device)
        self.used[slot] = name
        return slot

    def remove(self, slot: int) -> None:
        """Zero a slot so that nothing stale can ever reach a row, and make it free."""
        with torch.no_grad():
            for group in self.a:
                self.a[group][:, slot].zero_()
                self.b[group][:, :, slot].zero_()
        self.modules.pop(slot, None)  # a head copy is vocab x hidden: freed with its slot
        self.used.pop(slot, None)

    def _grow(self, weights: LoraWeights) -> None:
        slots = self.slots if len(self.used) < self.slots - 1 else self.slots * 2
        rank = max(self.rank, weights.rank)
        if (slots, rank) == (self.slots, self.rank):
            return
        assert not self.fixed, "a fixed stack is checked with refusal() first"
        old_a, old_b, old_slots, old_rank = dict(self.a), dict(self.b), self.slots, self.rank
        self.slots, self.rank = slots, rank
        for group in old_a:
            self._allocate(group)
            for member in range(len(self.shapes[group][1])):  # each member's block moves to its new column
                new, old = member * rank, member * old_rank
                self.a[group][:, :old_slots, new:new + old_rank] = old_a[group][:, :, old:old + old_rank]
                self.b[group][:, :, :old_slots, new:new + old_rank] = old_b[group][:, :, :, old:old + old_rank]


class LoraBatch:
    """The adapters of one forward pass's rows; apply() adds each row's LoRA output to a projection group.

    every_slot=True always uses the whole stack (a captured CUDA graph must not depend on which
    adapters a batch holds); otherwise a stack of more than SMALL_STACK slots is narrowed to the
    slots the rows use.
    """

    SMALL_STACK = 16

    def __init__(self, stacks: LoraStacks, slots: torch.Tensor, distinct: set[int] | None = None,
                 every_slot: bool = False):
        self.stacks = stacks
        self.a, self.b = stacks.a, stacks.b
        self.single = None
        if distinct is not None and len(distinct) == 1:  # every row the same adapter: plain matmuls
            self.single = next(iter(distinct))
            return
        count = stacks.slots
        if not every_slot and distinct is not None and stacks.slots > self.SMALL_STACK:
            picked = torch.tensor(sorted(distinct), device=slots.device)
            self.a = {g: t[:, picked] for g, t in stacks.a.items()}
            self.b = {g: t[:, :, picked] for g, t in stacks.b.items()}
            slots, count = torch.searchsorted(picked, slots), len(distinct)  # each row's place among them
        self.own = (slots.view(-1, 1) == torch.arange(count, device=slots.device)).to(stacks.dtype)
        self.masks: dict[int, torch.Tensor] = {}

    def _mask(self, width: int) -> torch.Tensor:
        """[rows, 1, slots * width]: ones on each row's own slot's columns."""
        if width not in self.masks:
            self.masks[width] = self.own.repeat_interleave(width, dim=1).unsqueeze(1)
        return self.masks[width]

    def apply(self, layer: int, group: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = self.a.get(group)
        if a is None:
            return y
        x = x.to(a.dtype)
        if self.single is not None:
            k = self.single
            lora = F.linear(F.linear(x, a[layer, k]), self.b[group][layer, :, k])
        else:
            a, b = a[layer], self.b[group][layer]  # [slots, width, in], [out, slots, width]
            h = F.linear(x, a.reshape(-1, a.shape[-1])) * self._mask(a.shape[1])
            lora = F.linear(h, b.reshape(b.shape[0], -1))
        return y + lora.to(y.dtype)


def group_shapes(layer: torch.nn.Module) -> dict[str, tuple[int, list[int]]]:
    """(in, [out of each member]) of every projection group of one decoder layer."""
    shapes = {}
    for group, members in GROUPS.items():
        parent = layer.self_attn if group in ("qkv", "o") else layer.mlp
        modules = [getattr(getattr(parent, m), "base_layer", getattr(parent, m)) for m in members]
        shapes[group] = (modules[0].in_features, [m.out_features for m in modules])
    return shapes

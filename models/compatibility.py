"""Does an adapter fit this base? Checked from its safetensors header alone, before PEFT allocates anything.

Every check returns a reason string (empty when it fits), so one adapter that does not fit is listed
with its reason in the Models tab while the others keep serving.
"""
from __future__ import annotations

import logging
import re

import torch

from kernel.errors import ArenaError, first_line

from .adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterInfo, one_line
from .base import LoadedBase
from .fit import judge_name
from .module_copies import carried, vocabulary_reason
from .safetensors_header import FLOAT_DTYPES, read_safetensors_header

log = logging.getLogger(__name__)

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(?:\.[^.]+)*$", re.S)
# A layer's LoRA is a pair: one half alone would leave PEFT's random init in place of the other.
_PAIRS = {"lora_A": "lora_B", "lora_B": "lora_A", "lora_embedding_A": "lora_embedding_B",
          "lora_embedding_B": "lora_embedding_A"}
# Where the rank sits in each kind of LoRA tensor: A is (r, in...), B is (out, r...).
_RANK_AXIS = {"lora_A": 0, "lora_B": 1, "lora_embedding_A": 0, "lora_embedding_B": 1}


def check_compatible(info: AdapterInfo, base: LoadedBase) -> str:
    """Return '' when the adapter fits this base, else the reason it does not.

    Everything PEFT would allocate is checked here first, from the file's header alone: which layers,
    their shapes, dtypes and the rank (the config's r against the weights), so a config claiming
    r=4096 over r=4 weights is refused before PEFT builds 4096-wide matrices for every layer.
    """
    try:
        reason = one_line(_compatibility(info, base))
        if not reason:
            judge_name(info, base)
        return reason
    except ArenaError as exc:
        return one_line(str(exc))
    except Exception as exc:  # noqa: BLE001 - a check that breaks costs this adapter, never the server
        log.warning("adapter %s: unexpected %s while checking it", info.name, type(exc).__name__, exc_info=True)
        return one_line(f"cannot check it: {type(exc).__name__}: {first_line(exc)}")


def _compatibility(info: AdapterInfo, base: LoadedBase) -> str:
    header = read_safetensors_header(info.path / WEIGHTS_FILE)
    if not header:
        return f"{WEIGHTS_FILE} holds no tensors"
    info.carries = carried(header)  # shown beside the adapter, loaded or not
    reason = vocabulary_reason(header, base.model)
    if reason:
        return reason
    modules = {name: _unwrapped(m) for name, m in base.model.named_modules()}
    # A list names module suffixes; a single string may be a regex or "all-linear", left to PEFT.
    if len(info.target_modules) > 1 or (info.target_modules and re.fullmatch(r"\w+", info.target_modules[0])
                                        and info.target_modules[0] != "all-linear"):
        reason = targets_reason(info.target_modules, modules)
        if reason:
            return reason
    ranks: dict[str, int] = {}
    kinds: dict[str, set[str]] = {}
    for key, entry in header.items():
        match = _LORA_KEY.match(key)
        if not match:
            reason = _whole_tensor_reason(key, entry, modules)
            if reason:
                return reason
            continue
        module_name, kind = match["module"], match["kind"]
        module = modules.get(module_name)
        if module is None:
            return f"targets module '{module_name[:120]}', which this base does not have"
        reason = _tensor_reason(module, kind, entry, info, module_name)
        if reason:
            return f"{key[:160]}: {reason}"
        if kind in _RANK_AXIS:
            ranks[module_name] = entry.shape[_RANK_AXIS[kind]]
            kinds.setdefault(module_name, set()).add(kind)
    if not ranks:
        return f"{WEIGHTS_FILE} holds no LoRA weights"
    for module_name, found in kinds.items():
        missing = sorted({_PAIRS[k] for k in found} - found)
        if missing:
            return f"layer '{module_name[:120]}' has {', '.join(sorted(found))} but no {', '.join(missing)}"
    return _config_rank_reason(info, max(ranks.values()))


def _whole_tensor_reason(key: str, entry, modules: dict[str, torch.nn.Module]) -> str:
    """A saved whole layer (modules_to_save: embed_tokens, lm_head) must have the base's shape: the
    vocabulary and hidden size of the model it was trained on show here."""
    module_name, _, param = re.sub(r"^base_model\.model\.", "", key).rpartition(".")
    module_name = re.sub(r"\.modules_to_save\.[^.]+$|\.original_module$", "", module_name)
    module = modules.get(module_name)
    weight = getattr(module, param, None) if module is not None else None
    if isinstance(weight, torch.Tensor) and list(weight.shape) != list(entry.shape):
        what = "vocabulary and hidden size" if isinstance(module, torch.nn.Embedding) or "head" in module_name else "shape"
        return f"{key[:160]}: shape {list(entry.shape)} does not fit the base's {list(weight.shape)} ({what})"
    return ""


def targets_reason(targets: list[str], modules: dict[str, torch.nn.Module]) -> str:
    """'' when every target names layers of this model that LoRA can wrap, else which one does not."""
    missing = []
    for target in targets:
        hits = [m for name, m in modules.items() if name == target or name.endswith("." + target)]
        if not hits:
            missing.append(target)
        elif not any(_wrappable(m) for m in hits):
            return (f"target module '{target}' is a {type(hits[0]).__name__}: LoRA wraps linear, embedding "
                    "and convolution layers")
    if missing:
        return f"target modules {', '.join(m[:60] for m in missing)} do not exist in this base"
    return ""


def _unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """The base layer inside a layer PEFT already wrapped for another adapter (LoRA, or a modules_to_save copy)."""
    while True:
        inner = getattr(module, "base_layer", None)
        inner = inner if isinstance(inner, torch.nn.Module) else getattr(module, "original_module", None)
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner


def _wrappable(module: torch.nn.Module) -> bool:
    return isinstance(module, _LORA_LAYERS) or type(module).__name__ == "Conv1D"  # GPT-2's transposed linear


_LORA_LAYERS = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def expected_rank(info: AdapterInfo, module_name: str) -> int:
    """The rank PEFT gives this layer: the first rank_pattern key matching its name's end, else r."""
    for key, rank in info.rank_pattern.items():
        if re.match(rf"(.*\.)?({key})$", module_name):  # PEFT's own rule (peft.utils.other.get_pattern_key)
            return rank
    return info.rank


def _tensor_reason(module, kind: str, entry, info: AdapterInfo, module_name: str) -> str:
    if entry.dtype not in FLOAT_DTYPES:
        return f"dtype {entry.dtype}; LoRA weights are {', '.join(FLOAT_DTYPES)}"
    if not _wrappable(module):
        return f"'{module_name[:120]}' is a {type(module).__name__}, which LoRA does not wrap"
    shape = list(entry.shape)
    if kind == "lora_magnitude_vector":
        return "" if len(shape) == 1 else f"shape {shape}: a DoRA magnitude is one-dimensional"
    linear = not isinstance(module, torch.nn.Embedding)
    if linear == kind.startswith("lora_embedding"):
        return f"a {kind} tensor for a {type(module).__name__} layer"
    wanted_dims = 2 if isinstance(module, torch.nn.Embedding) or hasattr(module, "in_features") else len(shape)
    if len(shape) != wanted_dims or len(shape) < 2:
        return f"shape {shape} has {len(shape)} dimensions, a {kind} tensor for this layer has {max(2, wanted_dims)}"
    rank = shape[_RANK_AXIS[kind]]
    if rank != expected_rank(info, module_name):
        return (f"rank {rank} in the weights, but {CONFIG_FILE} gives this layer r={expected_rank(info, module_name)}")
    return _shape_mismatch(module, kind, shape)


def _config_rank_reason(info: AdapterInfo, largest: int) -> str:
    """PEFT allocates every targeted layer at the config's rank, present in the weights or not."""
    for where, rank in [("r", info.rank), *((f"rank_pattern {k!r}", v) for k, v in info.rank_pattern.items())]:
        if rank > largest:
            return f"{CONFIG_FILE} says {where}={rank}, but no weight in {WEIGHTS_FILE} has a rank above {largest}"
    return ""


def _shape_mismatch(module: torch.nn.Module, kind: str, shape: list[int]) -> str:
    """LoRA A is (r, in) and B is (out, r): the in/out sides must match the base layer."""
    if hasattr(module, "in_features"):
        in_f, out_f = module.in_features, module.out_features
        if kind == "lora_A" and shape[1] != in_f:
            return f"shape {shape} does not fit the base layer's {in_f} inputs"
        if kind == "lora_B" and shape[0] != out_f:
            return f"shape {shape} does not fit the base layer's {out_f} outputs"
    if isinstance(module, torch.nn.Embedding):
        if kind == "lora_embedding_A" and shape[1] != module.num_embeddings:
            return f"shape {shape} does not fit the base vocabulary of {module.num_embeddings}"
        if kind == "lora_embedding_B" and shape[0] != module.embedding_dim:
            return f"shape {shape} does not fit the base embedding size {module.embedding_dim}"
    return ""

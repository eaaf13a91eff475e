"""The adapter registry: find LoRA folders, read their cards, and check them before PEFT sees them.

A broken adapter must never take the server down, so every check here returns a reason string
that the Models tab and `inference.py --list` show, while the other adapters keep serving.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kernel.errors import ArenaError, first_line

from .base import LoadedBase
from .fit import card_base, judge_name
from .module_copies import carried, vocabulary_reason
from .module_copies import describe as describe_carried
from .safetensors_header import FLOAT_DTYPES, read_safetensors_header  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CARD_FILE = "arena_card.json"
RESERVED_NAMES = {"base", "__base__"}
MAX_JSON_BYTES = 1 << 20  # a config or card is a few KB
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_name(name: str) -> str:
    """An adapter name is also a folder name: no separators, no '..', 1 to 64 plain characters."""
    if not isinstance(name, str) or not name:
        raise ArenaError("adapter name is empty")
    shown = printable(name[:80])
    if "/" in name or "\\" in name or ".." in name:
        raise ArenaError(f"adapter name '{shown}' may not contain '/', '\\' or '..'")
    if name.lower() in RESERVED_NAMES:
        raise ArenaError(f"adapter name '{shown}' is reserved for the base model")
    if not _NAME_RE.match(name):
        raise ArenaError(
            f"adapter name '{shown}' must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def validate_variant_name(name: str) -> str:
    """A found adapter's name: plain names joined by '/', optionally '@<step>' for a checkpoint.

    No part may be '..' or empty and none holds a comma or a space, so the name works as it is in
    the Compare dropdown, the API, `--variants a,b` lists and the votes."""
    path, _, step = name.partition("@")
    if step and not step.isdigit():
        raise ArenaError(f"adapter name '{printable(name[:80])}': only a checkpoint's step may follow '@'")
    for part in path.split("/"):
        if part.lower() in RESERVED_NAMES and "/" in path:
            continue  # 'runs/base' is a path, not the base
        validate_name(part)
    return name


def one_line(reason: str) -> str:
    """A reason as one printable line of bounded length, whatever text the adapter's files put into it."""
    return " ".join(printable(reason).split())[:400]


def printable(text: str) -> str:
    """Text safe to print and to send as JSON: a folder name that is not UTF-8 (Python keeps its bytes
    as lone surrogates) shows them as escapes, and a line break cannot start a second line."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\n", " ").replace("\r", " ")


@dataclass
class AdapterInfo:
    """What the registry knows of one adapter folder; status is available, loaded or failed."""

    name: str
    path: Path
    status: str = "available"
    reason: str = ""
    rank: int | None = None
    alpha: float | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)  # per-layer ranks, PEFT's regex keys
    target_modules: list[str] = field(default_factory=list)
    use_dora: bool = False
    base_model: str = ""
    card: dict = field(default_factory=dict)
    trainable_parameters: int | None = None
    carries: dict[str, float] = field(default_factory=dict)  # module -> MB saved beyond LoRA (modules_to_save...)
    served_by: str = ""  # once loaded: which backend path answers with it, and why when it is not the usual one
    card_base: str = ""  # base_model in the folder's README.md (the Hub's model card)
    fit_note: str = ""  # the named base differs but the weights fit: said, not refused
    fit_warning: str = ""  # named for another model whose shapes happen to fit: served only with this warning
    decision: str = ""  # the user's "serve anyway" / "do not serve", from DATA/adapter_decisions.json
    run: str = ""  # a checkpoint's run (its variant is run@step), with what trainer_state.json recorded
    step: int | None = None
    epoch: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    last_used: float = 0.0  # monotonic time of the last request: checkpoints unload least recently used first

    @property
    def created(self) -> str:
        return str(self.card.get("created", ""))

    @property
    def dataset(self) -> str:
        data = self.card.get("dataset", "")
        return data.get("name", "") if isinstance(data, dict) else str(data)

    def fail(self, reason: str) -> "AdapterInfo":
        self.status, self.reason = "failed", one_line(reason)
        return self

    def to_row(self) -> dict:
        return {
            "name": self.name, "status": self.status, "reason": self.reason, "rank": self.rank,
            "alpha": self.alpha, "target_modules": ",".join(self.target_modules), "dora": self.use_dora,
            "trainable_parameters": self.trainable_parameters, "base": self.base_model,
            "created": self.created, "dataset": self.dataset, "path": str(self.path), "served_by": self.served_by,
            "note": " ".join(filter(None, [self.fit_warning and f"warning: {self.fit_warning}", self.fit_note,
                                           self.decision and f"({self.decision})"])),
            "step": self.step, "epoch": self.epoch, "train_loss": self.train_loss, "eval_loss": self.eval_loss,
            "carries": describe_carried(self.carries),
        }

    @property
    def lazy(self) -> bool:
        """Checkpoints load on first use and unload when unused (a run may keep twenty)."""
        return self.step is not None


def inspect_folder(folder: Path, name: str | None = None) -> AdapterInfo:
    """Read an adapter's config and card; any problem, even one no check foresaw, becomes the reason.

    `name` is the adapter's path relative to its adapters folder (`finetuned-model/lora_weights`), with
    `@step` for a checkpoint (models/discovery.py); the folder's own name when not given."""
    name = name or folder.name
    info = AdapterInfo(name=printable(name), path=folder)
    try:
        validate_variant_name(name)
        info.card = _read_card(folder / CARD_FILE)
        info.card_base = card_base(folder)
        config = read_config(folder / CONFIG_FILE)
        _fill_from_config(info, config)
        _check_weights_file(folder)
    except ArenaError as exc:
        return info.fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a bad folder must never stop the scan of the others
        log.warning("adapter %s: unexpected %s while reading it", info.name, type(exc).__name__, exc_info=True)
        return info.fail(f"cannot read it: {type(exc).__name__}: {first_line(exc)}")
    return info


def _read_card(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        card = _read_json(path)
    except ArenaError:
        card = None
    return card if isinstance(card, dict) else {"warning": f"{CARD_FILE} is not a JSON object"}


def _read_json(path: Path) -> object:
    """A small JSON file of the folder; a huge one is refused unread (the server reads it on every scan)."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise ArenaError(f"{path.name} is larger than {MAX_JSON_BYTES // 2**20} MB")
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ArenaError(f"{path.name} is not valid JSON ({first_line(exc)[:120]})") from None
    except OSError as exc:
        raise ArenaError(f"{path.name} cannot be read ({exc.strerror or exc})") from None


def read_config(path: Path) -> dict:
    """adapter_config.json as a dict, with every field the registry and PEFT rely on type-checked."""
    if not path.is_file():
        raise ArenaError(f"no {CONFIG_FILE}")
    config = _read_json(path)
    if not isinstance(config, dict):
        raise ArenaError(f"{CONFIG_FILE} is not a JSON object")
    peft_type = config.get("peft_type")
    if not isinstance(peft_type, str) or peft_type.upper() != "LORA":
        raise ArenaError(f"peft_type is {str(peft_type)[:40]!r}, only LORA adapters are served")
    if not _positive_int(config.get("r")):
        raise ArenaError(f"{CONFIG_FILE}: 'r' must be a positive integer, got {str(config.get('r'))[:40]}")
    _check_field_types(config)
    return config


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# Fields PEFT reads whose wrong type would fail inside PEFT (after it allocated) rather than here.
_FIELD_TYPES = {"lora_alpha": (int, float), "lora_dropout": (int, float), "use_dora": bool, "use_rslora": bool,
                "fan_in_fan_out": bool, "base_model_name_or_path": str, "rank_pattern": dict,
                "alpha_pattern": dict, "modules_to_save": list, "layers_to_transform": (int, list)}


def _check_field_types(config: dict) -> None:
    for name, kinds in _FIELD_TYPES.items():
        value = config.get(name)
        if value is not None and (not isinstance(value, kinds) or (kinds is not bool and isinstance(value, bool))):
            raise ArenaError(f"{CONFIG_FILE}: '{name}' has the wrong type ({type(value).__name__})")
    targets = config.get("target_modules")
    if targets is not None and not (isinstance(targets, str)
                                    or isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise ArenaError(f"{CONFIG_FILE}: 'target_modules' must be a name, a regex or a list of names")
    if isinstance(targets, str):
        _compile(targets, "target_modules")
    for key, rank in (config.get("rank_pattern") or {}).items():
        _compile(rf"(.*\.)?({key})$", f"rank_pattern key {key[:60]!r}")
        if not _positive_int(rank):
            raise ArenaError(f"{CONFIG_FILE}: rank_pattern {key[:60]!r} must be a positive integer")
    for key in config.get("alpha_pattern") or {}:
        _compile(rf"(.*\.)?({key})$", f"alpha_pattern key {key[:60]!r}")


def _compile(pattern: str, what: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except (re.error, RecursionError, OverflowError):
        raise ArenaError(f"{CONFIG_FILE}: {what} is not a valid regular expression") from None


def _fill_from_config(info: AdapterInfo, config: dict) -> None:
    info.rank, info.alpha = config["r"], config.get("lora_alpha")
    info.rank_pattern = dict(config.get("rank_pattern") or {})
    targets = config.get("target_modules") or []
    info.target_modules = [targets] if isinstance(targets, str) else sorted(targets)
    info.use_dora = bool(config.get("use_dora"))
    info.base_model = str(info.card.get("base_model") or config.get("base_model_name_or_path")
                          or info.card_base or "")


def _check_weights_file(folder: Path) -> None:
    if (folder / WEIGHTS_FILE).is_file():
        return
    if (folder / "adapter_model.bin").is_file():
        raise ArenaError("adapter_model.bin (pickle) is not loaded for safety; save it as safetensors")
    raise ArenaError(f"no {WEIGHTS_FILE}")


# ----- against a base -------------------------------------------------------------------------

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

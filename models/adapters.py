"""The adapter registry: find LoRA folders, read their cards, and check them before PEFT sees them.

A broken adapter must never take the server down, so every check here returns a reason string
that the Models tab and `inference.py --list` show, while the other adapters keep serving.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .base import LoadedBase, short_name
from kernel.errors import ArenaError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
CARD_FILE = "arena_card.json"
RESERVED_NAMES = {"base", "__base__"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_name(name: str) -> str:
    """An adapter name is also a folder name: no separators, no '..', 1 to 64 plain characters."""
    if not isinstance(name, str) or not name:
        raise ArenaError("adapter name is empty")
    if "/" in name or "\\" in name or ".." in name:
        raise ArenaError(f"adapter name '{name}' may not contain '/', '\\' or '..'")
    if name.lower() in RESERVED_NAMES:
        raise ArenaError(f"adapter name '{name}' is reserved for the base model")
    if not _NAME_RE.match(name):
        raise ArenaError(
            f"adapter name '{name[:80]}' must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


@dataclass
class AdapterInfo:
    """What the registry knows of one adapter folder; status is available, loaded or failed."""

    name: str
    path: Path
    status: str = "available"
    reason: str = ""
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] = field(default_factory=list)
    use_dora: bool = False
    base_model: str = ""
    card: dict = field(default_factory=dict)
    trainable_parameters: int | None = None
    served_by: str = ""  # once loaded: which backend path answers with it, and why when it is not the usual one

    @property
    def created(self) -> str:
        return str(self.card.get("created", ""))

    @property
    def dataset(self) -> str:
        data = self.card.get("dataset", "")
        return data.get("name", "") if isinstance(data, dict) else str(data)

    def fail(self, reason: str) -> "AdapterInfo":
        self.status, self.reason = "failed", reason
        return self

    def to_row(self) -> dict:
        return {
            "name": self.name, "status": self.status, "reason": self.reason, "rank": self.rank,
            "alpha": self.alpha, "target_modules": ",".join(self.target_modules), "dora": self.use_dora,
            "trainable_parameters": self.trainable_parameters, "base": self.base_model,
            "created": self.created, "dataset": self.dataset, "path": str(self.path), "served_by": self.served_by,
        }


def scan(dirs: list[Path]) -> list[AdapterInfo]:
    """Every adapter folder under the given folders (one level deep), read but not checked against a base."""
    found: dict[str, AdapterInfo] = {}
    for root in dirs:
        if not Path(root).is_dir():
            continue
        for folder in sorted(Path(root).iterdir()):
            if not folder.is_dir() or folder.name.startswith("."):
                continue  # dot folders are temp folders of writes in progress
            info = inspect_folder(folder)
            if info.name in found:
                info.fail(f"name already used by {found[info.name].path}")
                info.name = f"{info.name}@{folder.parent.name}"
            found[info.name] = info
    return list(found.values())


def inspect_folder(folder: Path) -> AdapterInfo:
    """Read an adapter's config and card; any problem becomes the info's reason."""
    info = AdapterInfo(name=folder.name, path=folder)
    try:
        validate_name(folder.name)
    except ArenaError as exc:
        return info.fail(str(exc))
    card_path = folder / CARD_FILE
    if card_path.is_file():
        try:
            info.card = json.loads(card_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            info.card = {"warning": f"{CARD_FILE} is not valid JSON"}
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        return info.fail(f"no {CONFIG_FILE}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        return info.fail(f"{CONFIG_FILE} is not valid JSON ({exc})")
    if not isinstance(config, dict):
        return info.fail(f"{CONFIG_FILE} is not a JSON object")
    if config.get("peft_type", "").upper() != "LORA":
        return info.fail(f"peft_type is '{config.get('peft_type')}', only LORA adapters are served")
    rank = config.get("r")
    if not isinstance(rank, int) or rank <= 0:
        return info.fail(f"{CONFIG_FILE}: 'r' must be a positive integer, got {rank!r}")
    info.rank, info.alpha = rank, config.get("lora_alpha")
    targets = config.get("target_modules") or []
    info.target_modules = [targets] if isinstance(targets, str) else sorted(targets)
    info.use_dora = bool(config.get("use_dora"))
    info.base_model = str(info.card.get("base_model") or config.get("base_model_name_or_path") or "")
    if not (folder / WEIGHTS_FILE).is_file():
        if (folder / "adapter_model.bin").is_file():
            return info.fail("adapter_model.bin (pickle) is not loaded for safety; save it as safetensors")
        return info.fail(f"no {WEIGHTS_FILE}")
    return info


def read_safetensors_header(path: Path) -> dict:
    """Tensor names, shapes and offsets, read from the header alone; raises ArenaError on a bad file."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise ArenaError(f"{path.name} is truncated ({size} bytes)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > min(size - 8, 100_000_000):
            raise ArenaError(f"{path.name} is truncated or not safetensors (header of {header_len} bytes)")
        try:
            header = json.loads(handle.read(header_len))
        except ValueError:
            raise ArenaError(f"{path.name} has a corrupt header") from None
    header.pop("__metadata__", None)
    data_end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if size < 8 + header_len + data_end:
        raise ArenaError(f"{path.name} is truncated: {size} bytes, expected {8 + header_len + data_end}")
    return header


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)(?:\.[^.]+)*$")


def check_compatible(info: AdapterInfo, base: LoadedBase) -> str:
    """Return '' when the adapter fits this base, else the reason it does not."""
    if info.base_model and short_name(info.base_model) not in base.identities:
        return f"made for base '{info.base_model}', but the loaded base is '{base.name}'"
    try:
        header = read_safetensors_header(info.path / WEIGHTS_FILE)
    except (ArenaError, OSError) as exc:
        return str(exc)
    if not header:
        return f"{WEIGHTS_FILE} holds no tensors"
    modules = dict(base.model.named_modules())
    suffixes = {name.rsplit(".", 1)[-1] for name in modules}
    # A list names module suffixes; a single string may be a regex or "all-linear", left to PEFT.
    if len(info.target_modules) > 1 or (info.target_modules and re.fullmatch(r"\w+", info.target_modules[0])
                                        and info.target_modules[0] != "all-linear"):
        missing = [t for t in info.target_modules if t not in suffixes and t not in modules]
        if missing:
            return f"target modules {', '.join(missing)} do not exist in this base"
    targeted = set()
    for key, meta in header.items():
        match = _LORA_KEY.match(key)
        if not match:
            continue
        module_name, kind = match["module"], match["kind"]
        module = modules.get(module_name)
        if module is None:
            return f"targets module '{module_name}', which this base does not have"
        targeted.add(module_name)
        reason = _shape_mismatch(module, kind, meta["shape"])
        if reason:
            return f"{key}: {reason}"
    if not targeted:
        return f"{WEIGHTS_FILE} holds no LoRA weights"
    return ""


def _shape_mismatch(module: torch.nn.Module, kind: str, shape: list[int]) -> str:
    """LoRA A is (r, in) and B is (out, r): the in/out sides must match the base layer."""
    if isinstance(module, torch.nn.Linear) or hasattr(module, "in_features"):
        in_f, out_f = module.in_features, module.out_features
        if kind == "lora_A" and len(shape) == 2 and shape[1] != in_f:
            return f"shape {shape} does not fit the base layer's {in_f} inputs"
        if kind == "lora_B" and len(shape) == 2 and shape[0] != out_f:
            return f"shape {shape} does not fit the base layer's {out_f} outputs"
    if isinstance(module, torch.nn.Embedding):
        if kind == "lora_embedding_A" and shape[1] != module.num_embeddings:
            return f"shape {shape} does not fit the base vocabulary of {module.num_embeddings}"
        if kind == "lora_embedding_B" and shape[0] != module.embedding_dim:
            return f"shape {shape} does not fit the base embedding size {module.embedding_dim}"
    return ""

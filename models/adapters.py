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

from kernel.errors import ArenaError, first_line

from .fit import card_base
from .module_copies import describe as describe_carried

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

"""Whether an adapter's named base is this base: names compared the way people rename models.

The weights decide whether an adapter fits (models/adapters.py checks every tensor against the base);
the name in `adapter_config.json` only decides what the user is told. Unsloth records its 4-bit copy
(`unsloth/Llama-3.2-3B-Instruct-bnb-4bit`), a training script a local path, a fork its own org: after
normalising those, the same model gets a note, and another model (other family or size) a warning that
the user can settle per adapter ("serve anyway" or "do not serve", kept in DATA/adapter_decisions.json).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from kernel.errors import ArenaError
from kernel.files import atomic_write_text

# Suffixes that name a copy of the same weights, not another model (longest first).
_COPY_SUFFIXES = ("-unsloth-bnb-4bit", "-bnb-4bit", "-bnb-8bit", "-4bit", "-8bit", "-unsloth", "-gguf", "-awq",
                  "-gptq", "-fp16", "-bf16", "-hf")
_SIZE = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?)([mb])(?![a-z0-9])")
DECISIONS = ("serve anyway", "do not serve")


def normalise(name: str) -> str:
    """'unsloth/SmolLM2-135M-Instruct-bnb-4bit' and '/home/me/SmolLM2-135M-Instruct/' -> 'smollm2-135m-instruct'."""
    last = Path(str(name).strip().rstrip("/\\")).name.lower()
    changed = True
    while changed:
        changed = False
        for suffix in _COPY_SUFFIXES:
            if last.endswith(suffix) and len(last) > len(suffix):
                last, changed = last[: -len(suffix)], True
    return last


def family(name: str) -> str:
    """The model family: the leading letters of the normalised name ('llama', 'smollm', 'qwen')."""
    match = re.match(r"[a-z]+", normalise(name).replace("meta-", ""))
    return match[0] if match else ""


def size(name: str) -> str:
    match = _SIZE.search(normalise(name))
    return match[0] if match else ""


def name_verdict(recorded: str, base_names: set[str]) -> tuple[str, str]:
    """('', '') for the same name; ('note', text) for a copy or an unknown path; ('warning', text) for another model."""
    if not recorded:
        return "", ""
    if recorded.lower() in {n.lower() for n in base_names}:
        return "", ""
    wanted = normalise(recorded)
    if any(normalise(n) == wanted for n in base_names):
        return "note", f"trained on {recorded}; the weights fit this base"
    other = _other_model(recorded, base_names)
    if other:
        return "warning", f"made for {recorded} ({other}); its weights fit this base, but it may not answer as trained"
    return "note", f"trained on {recorded}; the weights fit this base"


def _other_model(recorded: str, base_names: set[str]) -> str:
    """Why the recorded name is another model than every name of the base, or '' when it cannot tell."""
    for what, part in (("another family", family), ("another size", size)):
        mine = part(recorded)
        theirs = {part(n) for n in base_names} - {""}
        if mine and theirs and mine not in theirs:
            return what
    return ""


def judge_name(info, base) -> None:
    """Once the weights fit: a note or a warning when the recorded base is named otherwise than this one."""
    info.fit_note = info.fit_warning = ""
    names = {base.name, base.path, getattr(base.model.config, "_name_or_path", "") or ""} - {""}
    for recorded in dict.fromkeys(filter(None, [info.base_model, info.card_base])):
        kind, text = name_verdict(recorded, names)
        if kind == "warning":
            info.fit_warning = info.fit_warning or text
        elif kind == "note":
            info.fit_note = info.fit_note or text


# ----- a model card's base ----------------------------------------------------------------------

_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.S)


def card_base(folder: Path, max_bytes: int = 1 << 20) -> str:
    """`base_model` from a README.md's YAML front matter (as the Hub and Unsloth write it), or ''."""
    import yaml

    path = folder / "README.md"
    try:
        if not path.is_file() or path.stat().st_size > max_bytes:
            return ""
        match = _FRONT_MATTER.match(path.read_text(encoding="utf-8", errors="replace"))
        meta = yaml.safe_load(match[1]) if match else None
    except (OSError, yaml.YAMLError, RecursionError):
        return ""
    base = meta.get("base_model") if isinstance(meta, dict) else None
    if isinstance(base, list):
        base = base[0] if base else None
    return base[:200] if isinstance(base, str) else ""


# ----- the user's decision per adapter ----------------------------------------------------------

def read_decisions(path: Path) -> dict[str, str]:
    """{adapter name: 'serve anyway' | 'do not serve'}; an unreadable file is no decisions, never a crash."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and v in DECISIONS} if isinstance(data, dict) else {}


def write_decision(path: Path, name: str, decision: str | None) -> dict[str, str]:
    """Remember (or with None forget) one adapter's decision; written to a temp name and renamed."""
    if decision is not None and decision not in DECISIONS:
        raise ArenaError(f"unknown decision '{decision}': use {' or '.join(DECISIONS)}")
    decisions = read_decisions(path)
    if decision is None:
        decisions.pop(name, None)
    else:
        decisions[name] = decision
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(decisions, indent=2, sort_keys=True))
    return decisions

"""Votes out as preference pairs (chosen vs rejected answer) for DPO-style training, and back in.

Two file forms, both written atomically:
  - JSONL, one object per line: prompt, chosen, rejected, history (earlier {role, content} turns,
    empty for a single turn), chosen_variant, rejected_variant;
  - the ShareGPT form of LLaMA-Factory's dpo_en_demo.json, a JSON array of
    {"conversations": [{"from": "human", "value": ...}, ...], "chosen": {"from": "gpt", "value": ...},
    "rejected": {"from": "gpt", "value": ...}}.
Only decisive votes (A or B won) become pairs. Ties, "both bad" and votes whose two answers are
word-for-word the same are skipped: there is nothing to prefer.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kernel.errors import ArenaError
from kernel.files import atomic_write_text, parse_json_array, parse_jsonl, read_text

from .votes import Vote

ROLE_TO_SHAREGPT = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}
SHAREGPT_TO_ROLE = {value: key for key, value in ROLE_TO_SHAREGPT.items()}


@dataclass
class PreferencePair:
    """One training example: for `prompt` after `history`, `chosen` was preferred over `rejected`."""

    prompt: str
    chosen: str
    rejected: str
    history: list[dict] = field(default_factory=list)  # earlier {role, content} turns, system prompt included
    chosen_variant: str | None = None  # unknown when read from a ShareGPT file
    rejected_variant: str | None = None

    def to_record(self) -> dict:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected, "history": self.history,
                "chosen_variant": self.chosen_variant, "rejected_variant": self.rejected_variant}

    def to_sharegpt(self) -> dict:
        turns = self.history + [{"role": "user", "content": self.prompt}]
        return {"conversations": [{"from": ROLE_TO_SHAREGPT[m["role"]], "value": m["content"]} for m in turns],
                "chosen": {"from": "gpt", "value": self.chosen},
                "rejected": {"from": "gpt", "value": self.rejected}}


@dataclass
class ExportResult:
    path: Path
    written: int
    skipped: int  # ties, "both bad", and decisive votes with identical answers


def pair_from_vote(vote: Vote) -> PreferencePair | None:
    """The preference a decisive vote expresses, or None when it expresses none.

    In a multi-turn chat each side saw its own earlier answers; the pair keeps the winner's history,
    since that is the conversation the trained model should continue.
    """
    if vote.winner not in ("a", "b"):
        return None
    won, lost = (vote.conversation_a, vote.conversation_b) if vote.winner == "a" else \
        (vote.conversation_b, vote.conversation_a)
    if won[-1]["content"] == lost[-1]["content"]:
        return None
    last_user = max(i for i, message in enumerate(won) if message["role"] == "user")
    chosen_variant, rejected_variant = (vote.variant_a, vote.variant_b) if vote.winner == "a" else \
        (vote.variant_b, vote.variant_a)
    return PreferencePair(
        prompt=won[last_user]["content"], chosen=won[-1]["content"], rejected=lost[-1]["content"],
        history=[{"role": m["role"], "content": m["content"]} for m in won[:last_user]],
        chosen_variant=chosen_variant, rejected_variant=rejected_variant)


def preference_pairs(votes: list[Vote]) -> tuple[list[PreferencePair], int]:
    """(pairs, how many votes were skipped)."""
    pairs = [pair for pair in map(pair_from_vote, votes) if pair is not None]
    return pairs, len(votes) - len(pairs)


def export_jsonl(votes: list[Vote], path: str | Path) -> ExportResult:
    """Write the pairs as JSONL (one object per line)."""
    pairs, skipped = preference_pairs(votes)
    text = "".join(json.dumps(pair.to_record(), ensure_ascii=False) + "\n" for pair in pairs)
    atomic_write_text(Path(path), text)
    return ExportResult(Path(path), len(pairs), skipped)


def export_sharegpt(votes: list[Vote], path: str | Path) -> ExportResult:
    """Write the pairs as a JSON array in the ShareGPT form of dpo_en_demo.json."""
    pairs, skipped = preference_pairs(votes)
    text = json.dumps([pair.to_sharegpt() for pair in pairs], ensure_ascii=False, indent=2) + "\n"
    atomic_write_text(Path(path), text)
    return ExportResult(Path(path), len(pairs), skipped)


def read_preference_pairs(path: str | Path) -> list[PreferencePair]:
    """Read pairs from either form: a JSON array or JSONL, of flat or ShareGPT records (told apart per record).

    Errors name the file and the line (JSONL) or record number (JSON array, counted from 1).
    """
    path = Path(path)
    text = read_text(path)
    if text.lstrip().startswith("["):
        located = [(f"{path} record {n}", record) for n, record in enumerate(parse_json_array(path, text), 1)]
    else:
        located = [(f"{path} line {n}", record) for n, record in parse_jsonl(path, text)]
    return [pair_from_record(record, where) for where, record in located]


def pair_from_record(record, where: str) -> PreferencePair:
    if not isinstance(record, dict):
        raise ArenaError(f"{where}: expected an object, got {type(record).__name__}")
    if "conversations" in record:
        return pair_from_sharegpt(record, where)
    if "prompt" in record:
        return pair_from_flat(record, where)
    raise ArenaError(f"{where}: neither a ShareGPT record ('conversations') nor a flat one ('prompt')")


def pair_from_flat(record: dict, where: str) -> PreferencePair:
    for key in ("prompt", "chosen", "rejected"):
        require_text(record.get(key), f"{where}: '{key}'")
    history = record.get("history") or []
    if not isinstance(history, list):
        raise ArenaError(f"{where}: 'history' must be a list of {{role, content}} messages")
    for number, message in enumerate(history, 1):
        if not isinstance(message, dict) or message.get("role") not in ROLE_TO_SHAREGPT:
            raise ArenaError(f"{where}: history message {number} needs a role in {', '.join(ROLE_TO_SHAREGPT)}")
        require_text(message.get("content"), f"{where}: history message {number} content")
    for key in ("chosen_variant", "rejected_variant"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise ArenaError(f"{where}: '{key}' must be text or null")
    return PreferencePair(record["prompt"], record["chosen"], record["rejected"],
                          [{"role": m["role"], "content": m["content"]} for m in history],
                          record.get("chosen_variant"), record.get("rejected_variant"))


def pair_from_sharegpt(record: dict, where: str) -> PreferencePair:
    turns = record["conversations"]
    if not isinstance(turns, list) or not turns:
        raise ArenaError(f"{where}: 'conversations' must be a non-empty list of {{from, value}} turns")
    messages = [sharegpt_turn(turn, f"{where}: conversations turn {n}") for n, turn in enumerate(turns, 1)]
    if messages[-1]["role"] != "user":
        raise ArenaError(f"{where}: the last conversations turn must be from 'human' (the prompt), "
                         f"not {turns[-1]['from']!r}")
    chosen = sharegpt_answer(record.get("chosen"), f"{where}: 'chosen'")
    rejected = sharegpt_answer(record.get("rejected"), f"{where}: 'rejected'")
    return PreferencePair(messages[-1]["content"], chosen, rejected, messages[:-1])


def sharegpt_turn(turn, where: str) -> dict:
    if not isinstance(turn, dict) or turn.get("from") not in SHAREGPT_TO_ROLE:
        raise ArenaError(f"{where}: needs 'from' in {', '.join(SHAREGPT_TO_ROLE)}")
    require_text(turn.get("value"), f"{where} 'value'")
    return {"role": SHAREGPT_TO_ROLE[turn["from"]], "content": turn["value"]}


def sharegpt_answer(answer, where: str) -> str:
    if not isinstance(answer, dict) or answer.get("from") != "gpt":
        raise ArenaError(f"{where} must be an object {{\"from\": \"gpt\", \"value\": ...}}")
    require_text(answer.get("value"), f"{where} value")
    return answer["value"]


def require_text(value, what: str) -> None:
    if not isinstance(value, str):
        raise ArenaError(f"{what} must be text, got {type(value).__name__}")

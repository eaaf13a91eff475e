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


@dataclass
class VoteSelection:
    """The pairs to train on, and how many votes were left out, by why."""

    pairs: list[PreferencePair] = field(default_factory=list)
    ties: int = 0
    both_bad: int = 0
    identical: int = 0  # decisive, but both answers word for word the same
    other_winner: int = 0  # decisive, but won by another variant than the one asked for

    def summary(self) -> str:
        left = [(self.ties, "ties"), (self.both_bad, '"both bad"'), (self.identical, "identical answers"),
                (self.other_winner, "won by another variant")]
        text = ", ".join(f"{n} {what}" for n, what in left if n)
        return f"{len(self.pairs)} pairs" + (f" (left out: {text})" if text else "")


def select_pairs(votes: list[Vote], winner: str | None = None) -> VoteSelection:
    """The preference pairs of the decisive votes, only those `winner` won when one is given."""
    selection = VoteSelection()
    for vote in votes:
        pair = pair_from_vote(vote)
        if vote.winner == "tie":
            selection.ties += 1
        elif vote.winner == "both_bad":
            selection.both_bad += 1
        elif pair is None:
            selection.identical += 1
        elif winner is not None and pair.chosen_variant != winner:
            selection.other_winner += 1
        else:
            selection.pairs.append(pair)
    return selection


def write_pairs_jsonl(pairs: list[PreferencePair], path: str | Path) -> Path:
    """The pairs as JSONL (the Leaderboard's export form), written atomically."""
    text = "".join(json.dumps(pair.to_record(), ensure_ascii=False) + "\n" for pair in pairs)
    atomic_write_text(Path(path), text)
    return Path(path)


def export_jsonl(votes: list[Vote], path: str | Path) -> ExportResult:
    """Write the pairs as JSONL (one object per line)."""
    pairs, skipped = preference_pairs(votes)
    return ExportResult(write_pairs_jsonl(pairs, path), len(pairs), skipped)


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
    return [pair_from_record(record, where) for _, where, record in located_records(path)]


def read_pairs_leniently(path: str | Path) -> tuple[list[tuple[int, PreferencePair]], list[tuple[int, str]]]:
    """(record number, pair) for every usable record, and (record number, why) for the others: an evaluation
    runs on what it can read and reports the rest, as a suite's malformed lines are."""
    pairs, problems = [], []
    for number, where, record in located_records(path):
        try:
            pairs.append((number, pair_from_record(record, where)))
        except ArenaError as exc:
            problems.append((number, str(exc).removeprefix(f"{where}: ")))
    if not pairs:
        first = "; ".join(f"record {n}: {why}" for n, why in problems[:3])
        raise ArenaError(f"{path}: no usable preference pair ({first or 'the file is empty'})")
    return pairs, problems


def located_records(path: str | Path) -> list[tuple[int, str, object]]:
    """(number, "FILE line N" or "FILE record N", record) for each record of a JSON array or JSONL file."""
    path = Path(path)
    text = read_text(path)
    if text.lstrip().startswith("["):
        return [(n, f"{path} record {n}", record) for n, record in enumerate(parse_json_array(path, text), 1)]
    return [(n, f"{path} line {n}", record) for n, record in parse_jsonl(path, text)]


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
                          system_turn(record, where) + [{"role": m["role"], "content": m["content"]} for m in history],
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
    return PreferencePair(messages[-1]["content"], chosen, rejected, system_turn(record, where) + messages[:-1])


def system_turn(record: dict, where: str) -> list[dict]:
    """An optional top-level "system" field (LLaMA-Factory's and the Training tab's forms have one) as a message."""
    system = record.get("system")
    if system is None or system == "":
        return []
    require_text(system, f"{where}: 'system'")
    return [{"role": "system", "content": system}]


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

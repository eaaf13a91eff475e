"""Preference data in: pairs (chosen over rejected) or KTO's unpaired answers, out: rows TRL's trainers take.

Row formats (`format="auto"` detects them from the rows' keys, as for SFT data):
  pairs     the Leaderboard's export: {"prompt", "chosen", "rejected", optional "system", "history": [{role,
            content}]}; prompt may also be a list of messages and chosen/rejected one assistant message (TRL's form)
  sharegpt  LLaMA-Factory's dpo_en_demo.json: {"conversations": [{"from", "value"}, ...], "chosen": {"from": "gpt",
            "value"}, "rejected": {...}, optional "system"}
  kto       {"prompt", "completion", "label": true/false}: one answer, marked desirable or not

Every row becomes a `PreferenceExample` or a reason it was dropped, counted in the same `DatasetReport`
the SFT data uses: missing fields, an empty or identical chosen and rejected, a prompt that does not end
with the user, rows longer than max_length. KTO can train on pairs (each pair gives one desirable and
one undesirable answer); DPO and ORPO need pairs.
"""
from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass

from kernel.errors import ArenaError
from kernel.files import BadRow
from training.config import PREFERENCE_FORMATS, TrainConfig
from training.data import (DETECT_ROWS, DatasetReport, TokenStats, check_messages, convert_file, from_turns, need,
                           split_examples, with_system)
from training.encoding import fill_lengths, render, token_ids

FORMAT_KEYS = {"sharegpt": ("conversations", "chosen"), "pairs": ("prompt", "chosen"), "kto": ("completion", "label")}
LABELS = {True: True, False: False, 1: True, 0: False, "true": True, "false": False, "1": True, "0": False}


@dataclass
class PreferenceExample:
    """One row: the conversation up to the last user message, then two answers (pairs) or one with a label (KTO)."""

    prompt: list[dict]  # system first when there is one; ends with the user's message
    row: int
    chosen: str | None = None
    rejected: str | None = None
    completion: str | None = None  # KTO
    label: bool | None = None  # KTO: desirable or not

    @property
    def answers(self) -> list[tuple[str, str]]:
        """(what it is, text) for each answer, in the order the preview shows them."""
        if self.completion is not None:
            return [("desirable" if self.label else "undesirable", self.completion)]
        return [("chosen", self.chosen), ("rejected", self.rejected)]


# ----- formats ---------------------------------------------------------------------------------

def detect_row_format(row: dict) -> str | None:
    return next((name for name, keys in FORMAT_KEYS.items() if all(k in row for k in keys)), None)


def detect_format(rows: list, path) -> str:
    found = Counter(name for _, row in rows[:DETECT_ROWS * 5] if isinstance(row, dict)
                    and (name := detect_row_format(row)))
    if not found:
        wanted = "; ".join(f"{name}: {' + '.join(keys)}" for name, keys in FORMAT_KEYS.items())
        raise ArenaError(f"{path}: not preference data: no row has the fields of any preference format ({wanted})")
    return found.most_common(1)[0][0]


def answer_text(value, field: str) -> str:
    """An answer given as text, as {"from": "gpt", "value"} (sharegpt) or as [{"role": "assistant", "content"}] (TRL)."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        speaker = value.get("role", value.get("from"))
        if speaker not in ("assistant", "gpt"):
            raise BadRow("bad role", f"{field} must be the assistant's answer, not {speaker!r}")
        value = value.get("content", value.get("value"))
    if value is None:
        raise BadRow("missing field", field)
    if not isinstance(value, str):
        raise BadRow("wrong type", f"{field} must be text")
    if not value.strip():
        raise BadRow("empty", f"{field} is empty")
    return value.strip()


def prompt_messages(row: dict) -> list[dict]:
    """The conversation before the answers: system, earlier turns, then the user's prompt."""
    prompt = row.get("prompt")
    if isinstance(prompt, list):  # TRL's conversational form
        messages = from_turns(prompt, "prompt", "role", "content")
    else:
        history = need(row, "history", list, optional=True)
        messages = from_turns(history, "history", "role", "content") + [{"role": "user", "content": need(row, "prompt")}]
    return with_system(messages, row)


def sharegpt_prompt(row: dict) -> list[dict]:
    return with_system(from_turns(need(row, "conversations", list), "conversations", "from", "value"), row)


def checked_prompt(messages: list[dict]) -> list[dict]:
    """The turn order a chat template expects, the last message the user's (the answers follow it)."""
    if not messages or messages[-1]["role"] != "user":
        last = messages[-1]["role"] if messages else "nothing"
        raise BadRow("bad role order", f"the prompt must end with the user's message, not {last}")
    if not messages[-1]["content"].strip():
        raise BadRow("empty", "the prompt is empty")
    # check_messages wants a whole conversation: check it with a stand-in answer, then take it off.
    return check_messages(messages + [{"role": "assistant", "content": "."}])[:-1]


def convert_row(row, fmt: str, auto: bool) -> PreferenceExample:
    """One row as a PreferenceExample (its `row` set by the caller), or BadRow with the reason."""
    if isinstance(row, BadRow):
        raise row
    if not isinstance(row, dict):
        raise BadRow("not a dict", f"row is {type(row).__name__}, expected an object")
    found = detect_row_format(row)
    if auto and found is not None and found != fmt:
        raise BadRow("other format", f"row is {found}, the file is {fmt}")
    if fmt == "kto":
        label = LABELS.get(row["label"].lower() if isinstance(row.get("label"), str) else row.get("label"))
        if label is None:
            raise BadRow("bad label", f"label must be true or false, not {row.get('label')!r}")
        return PreferenceExample(checked_prompt(prompt_messages(row)), 0, completion=answer_text(
            row.get("completion"), "completion"), label=label)
    prompt = sharegpt_prompt(row) if fmt == "sharegpt" else prompt_messages(row)
    chosen, rejected = answer_text(row.get("chosen"), "chosen"), answer_text(row.get("rejected"), "rejected")
    if chosen == rejected:
        raise BadRow("identical", "chosen and rejected are the same text: nothing to prefer")
    return PreferenceExample(checked_prompt(prompt), 0, chosen=chosen, rejected=rejected)


def load_preference_dataset(path, format: str = "auto") -> tuple[list[PreferenceExample], DatasetReport]:
    """Every usable row of a preference file, with a report of the rows dropped and why."""
    converted, report = convert_file(path, format, PREFERENCE_FORMATS, detect_format, convert_row)
    for number, example in converted:
        example.row = number
    return [example for _, example in converted], report


def for_objective(examples: list[PreferenceExample], objective: str, path) -> list[PreferenceExample]:
    """KTO takes pairs as two unpaired answers; DPO and ORPO cannot learn from unpaired ones."""
    unpaired = [e for e in examples if e.completion is not None]
    if objective == "kto":
        split = []
        for e in examples:
            split += [e] if e.completion is not None else [
                PreferenceExample(e.prompt, e.row, completion=e.chosen, label=True),
                PreferenceExample(e.prompt, e.row, completion=e.rejected, label=False)]
        return split
    if unpaired:
        raise ArenaError(f"{path}: rows of prompt/completion/label are unpaired answers: {objective} needs "
                         "chosen/rejected pairs; train them with --method kto")
    return examples


# ----- tokens ----------------------------------------------------------------------------------

def rendered(example: PreferenceExample, tokenizer) -> tuple[str, list[tuple[str, str]]]:
    """The prompt as the chat template renders it (with the generation prompt), and each answer's text after it."""
    prompt = render(tokenizer, example.prompt, add_generation_prompt=True)
    answers = []
    for kind, text in example.answers:
        whole = render(tokenizer, example.prompt + [{"role": "assistant", "content": text}])
        answers.append((kind, whole[len(prompt):] if whole.startswith(prompt) else text))
    return prompt, answers


def lengths(example: PreferenceExample, tokenizer) -> tuple[int, int]:
    """(prompt tokens, longest prompt + answer), as the trainer tokenizes them."""
    prompt, answers = rendered(example, tokenizer)
    return len(token_ids(tokenizer, prompt)), max(len(token_ids(tokenizer, prompt + a)) for _, a in answers)


def fit(examples: list[PreferenceExample], tokenizer, cfg: TrainConfig, report: DatasetReport,
        sizes: list[int]) -> list[PreferenceExample]:
    """Rows that fit max_length (longer ones truncated or dropped, as `overlong` says); counts go to
    report.tokens, each row's length to `sizes`."""
    stats = report.tokens or TokenStats(max_length=cfg.max_length)
    report.tokens = stats
    kept, dropped = [], set()
    for example in examples:
        prompt, total = lengths(example, tokenizer)
        sizes.append(total)
        stats.over_max_length += total > cfg.max_length
        why = None
        if prompt >= cfg.max_length:
            why = BadRow("prompt longer than max_length", f"{prompt} prompt tokens, max_length {cfg.max_length}")
        elif total > cfg.max_length and cfg.overlong == "drop":
            why = BadRow("longer than max_length", f"{total} tokens, max_length {cfg.max_length}")
        if why is not None:
            if example.row not in dropped:  # a pair KTO splits in two is one row of the file
                report.drop(example.row, why.kind, why.detail)
            dropped.add(example.row)
            stats.dropped += 1
            continue
        stats.truncated += total > cfg.max_length
        kept.append(example)
    return kept


def trl_row(example: PreferenceExample, tokenizer) -> dict:
    """The row in TRL's conversational form (its trainers apply the chat template), or as text without one."""
    if getattr(tokenizer, "chat_template", None):
        answer = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
        prompt = example.prompt
    else:  # TRL adds the EOS token to text answers
        answer = lambda text: " " + text  # noqa: E731
        prompt = render(tokenizer, example.prompt, add_generation_prompt=True)
    if example.completion is not None:
        return {"prompt": prompt, "completion": answer(example.completion), "label": example.label}
    return {"prompt": prompt, "chosen": answer(example.chosen), "rejected": answer(example.rejected)}


# ----- the check and the preview ----------------------------------------------------------------

def preview(examples: list[PreferenceExample], tokenizer, n: int = 3) -> str:
    """HTML: the first n rows through the chat template, each answer after the prompt, marked chosen or rejected."""
    colours = {"chosen": "#c8f2c2", "desirable": "#c8f2c2", "rejected": "#f6c9c9", "undesirable": "#f6c9c9"}
    parts = []
    for example in examples[:n]:
        prompt, answers = rendered(example, tokenizer)
        body = "".join(
            f'<div class="preference-{kind}"><b>{"✓" if kind in ("chosen", "desirable") else "✗"} {kind}</b>'
            f'<pre style="white-space: pre-wrap">{html.escape(prompt)}'
            f'<mark style="background: {colours[kind]}">{html.escape(text)}</mark></pre></div>'
            for kind, text in answers)
        parts.append(f"<h4>row {example.row} · prompt {len(token_ids(tokenizer, prompt))} tokens</h4>{body}")
    return '<div class="training-preview">' + "\n".join(parts) + "</div>"


@dataclass
class PreferenceData:
    train: list[PreferenceExample]
    validation: list[PreferenceExample]
    report: DatasetReport  # of the dataset file: rows kept and dropped, token lengths


def load_split(cfg: TrainConfig, tokenizer) -> PreferenceData:
    """The job's rows for its objective, split (by file row, so a KTO pair stays on one side) and fitted to
    max_length; every row dropped, and the token lengths of the file's rows, are in the report."""
    examples, report = load_preference_dataset(cfg.dataset, cfg.format)
    if cfg.validation_file:
        train, validation = examples, load_preference_dataset(cfg.validation_file, cfg.format)[0]
    else:
        train, validation = split_examples(examples, cfg.validation_split, cfg.seed)
    sizes: list[int] = []
    train = fit(for_objective(train, cfg.objective, cfg.dataset), tokenizer, cfg, report, sizes)
    # A separate validation file's drops and lengths are not this file's: they go to a report of their own.
    other = DatasetReport(path=str(cfg.validation_file), format=report.format) if cfg.validation_file else report
    validation = fit(for_objective(validation, cfg.objective, cfg.dataset), tokenizer, cfg, other,
                     [] if cfg.validation_file else sizes)
    fill_lengths(report.tokens, sizes)
    report.rows_kept = len({e.row for e in train} | ({e.row for e in validation} if other is report else set()))
    return PreferenceData(train, validation, report)

"""Training data in: JSON, JSONL or CSV rows in any of five formats, out: chat messages per row.

Every row becomes an `Example` (a list of {role, content} messages, or plain text) or a reason it
was dropped; the `DatasetReport` counts both so the UI and the command line can say what happened
to each row. Token counts are added later by `training.encoding.encode_all`.

Formats (`format="auto"` detects them from the rows' keys):
  text               {"text": "<|user|>\n...\n<|assistant|>\n..."} or ChatML; anything else is plain text
  alpaca             {"instruction", "input", "output", optional "system", "history": [[q, a], ...]}
  sharegpt           {"conversations": [{"from", "value"}], optional "system", "tools"}
  messages           {"messages": [{"role", "content"}], optional "system", "tools"}
  prompt_completion  {"prompt", "completion"}
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from kernel.errors import ArenaError
from kernel.files import BadRow, read_rows, too_long
from training.config import FORMATS

JSON_CELLS = ("conversations", "messages", "history", "tools")  # CSV columns that may hold JSON text
# One row's text, more than any max_length can use (131072 tokens); training reads at most what
# max_length needs of it anyway (training.encoding.cut_to_fit).
MAX_ROW_CHARS = 2**20
MAX_BAD_ROWS = 50  # enough to see a pattern; a million bad rows would bloat the report
DETECT_ROWS = 20  # the format is the most common one among the first rows that have one
# The key that marks each format; a row with several is read as the first one listed.
FORMAT_KEYS = {"messages": "messages", "conversations": "sharegpt", "instruction": "alpaca",
               "prompt": "prompt_completion", "text": "text"}
# Sharegpt tool turns: a call is what the assistant says; an observation is what the tool answers.
# Observations stay role "tool" (ChatML and Llama 3 templates render it as such); encoding falls back
# to a user "Observation:" message for templates that would drop a tool message.
ROLE_ALIASES = {
    "system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
    "bot": "assistant", "model": "assistant", "function_call": "assistant", "tool": "tool",
    "observation": "tool", "function": "tool", "ipython": "tool",
}
TOOLS_PREAMBLE = ("You can call the following functions. To call one, answer with a JSON object "
                  '{"name": ..., "arguments": {...}}.\n')


@dataclass
class Example:
    """One trainable row: chat messages, or plain `text` (then messages is empty)."""

    messages: list[dict]
    row: int  # 1-based: array index, JSONL line number, or CSV data row (header not counted)
    text: str | None = None


@dataclass
class TokenStats:
    """Lengths in tokens of the kept rows, as the chat template renders them, before truncation.

    A row cut before tokenising (training.encoding.cut_to_fit) counts with its cut length, which is
    still over max_length.
    """

    max_length: int
    rows: int = 0
    min: int = 0
    median: int = 0
    p95: int = 0
    max: int = 0
    over_max_length: int = 0
    truncated: int = 0
    dropped: int = 0  # rows encoding could not train on; their reasons are in the report


@dataclass
class DatasetReport:
    path: str
    format: str
    rows_total: int = 0
    rows_kept: int = 0
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    bad_rows: list[tuple[int, str]] = field(default_factory=list)  # the first MAX_BAD_ROWS
    tokens: TokenStats | None = None

    def drop(self, row: int, kind: str, detail: str = "") -> None:
        self.dropped_by_reason[kind] = self.dropped_by_reason.get(kind, 0) + 1
        if len(self.bad_rows) < MAX_BAD_ROWS:
            self.bad_rows.append((row, f"{kind}: {detail}" if detail else kind))

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped_by_reason.items()))
        line = f"{self.path}: {self.format}, {self.rows_kept} of {self.rows_total} rows kept"
        line += f" (dropped: {reasons})" if reasons else ""
        if self.tokens:
            t = self.tokens
            line += (f"; tokens min {t.min}, median {t.median}, p95 {t.p95}, max {t.max}; "
                     f"{t.over_max_length} over max_length {t.max_length}")
        return line


# ----- formats ---------------------------------------------------------------------------------

def detect_row_format(row: dict) -> str | None:
    return next((name for key, name in FORMAT_KEYS.items() if key in row), None)


def detect_format(rows: list[tuple[int, object]], path: Path) -> str:
    found = Counter()
    for _, row in rows:
        name = detect_row_format(row) if isinstance(row, dict) else None
        if name:
            found[name] += 1
            if sum(found.values()) >= DETECT_ROWS:
                break
    if not found:
        raise ArenaError(f"{path}: cannot detect the format: no row has any of {', '.join(FORMAT_KEYS)}")
    return found.most_common(1)[0][0]


def need(row: dict, key: str, kind: type = str, optional: bool = False):
    """A field's value, checked: missing or of the wrong type raises BadRow naming the field."""
    value = row.get(key)
    if value is None:
        if optional:
            return kind()
        raise BadRow("missing field", key)
    if not isinstance(value, kind):
        want = "text" if kind is str else "a list"
        raise BadRow("wrong type", f"{key} must be {want}, not {type(value).__name__}")
    return value


def from_alpaca(row: dict) -> list[dict]:
    instruction, output = need(row, "instruction"), need(row, "output")
    extra = need(row, "input", optional=True)
    messages = [{"role": "system", "content": need(row, "system", optional=True)}]
    for n, pair in enumerate(need(row, "history", list, optional=True), 1):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise BadRow("wrong type", f"history item {n} must be a [question, answer] pair of texts")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def from_prompt_completion(row: dict) -> list[dict]:
    return [{"role": "system", "content": need(row, "system", optional=True)},
            {"role": "user", "content": need(row, "prompt")},
            {"role": "assistant", "content": need(row, "completion")}]


def from_turns(turns: list, field_name: str, role_key: str, content_key: str) -> list[dict]:
    messages = []
    for n, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise BadRow("wrong type", f"{field_name} item {n} must be an object")
        raw_role = turn.get(role_key, turn.get("role" if role_key == "from" else "from"))
        role = ROLE_ALIASES.get(str(raw_role).lower()) if raw_role is not None else None
        if role is None:
            raise BadRow("bad role", f"{field_name} item {n} has role {raw_role!r}")
        content = turn.get(content_key, turn.get("content" if content_key == "value" else "value"))
        if isinstance(content, (dict, list)) and raw_role == "function_call":
            content = json.dumps(content, ensure_ascii=False)
        if not isinstance(content, str):
            raise BadRow("wrong type", f"{field_name} item {n} ({raw_role}) has no text content")
        messages.append({"role": role, "content": content})
    return messages


def tools_text(tools) -> str:
    """The functions as the system prompt shows them, so the model sees what it may call."""
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except ValueError:
            raise BadRow("wrong type", "tools must be a JSON list of functions") from None
    if not isinstance(tools, list):
        raise BadRow("wrong type", "tools must be a list of functions")
    # One compact JSON line per function: readable, and far fewer tokens than indented JSON.
    lines = [json.dumps(tool, ensure_ascii=False) for tool in tools]
    return TOOLS_PREAMBLE + "\n".join(lines) if tools else ""


def with_system(messages: list[dict], row: dict) -> list[dict]:
    """One system message first: the row's system field, a leading system turn, then the tools."""
    system = need(row, "system", optional=True)
    if messages and messages[0]["role"] == "system":
        system = "\n\n".join(s for s in (system, messages.pop(0)["content"]) if s.strip())
    tools = tools_text(row["tools"]) if row.get("tools") else ""
    system = "\n\n".join(s for s in (system, tools) if s.strip())
    return [{"role": "system", "content": system}] + messages


def from_sharegpt(row: dict) -> list[dict]:
    return with_system(from_turns(need(row, "conversations", list), "conversations", "from", "value"), row)


def from_messages(row: dict) -> list[dict]:
    return with_system(from_turns(need(row, "messages", list), "messages", "role", "content"), row)


def from_text(row: dict) -> list[dict] | str:
    """Chat-formatted text parsed into messages when it parses cleanly, else the text itself."""
    text = need(row, "text")
    for parse in (parse_chatml, parse_zephyr):
        messages = parse(text)
        if messages:
            try:
                return check_messages(messages)
            except BadRow:
                pass  # looks like chat but is not a whole conversation: train on it as text
    return text


CHATML_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|(?=<\|im_start\|>)|\Z)", re.S)
ZEPHYR_TAG = re.compile(r"<\|(system|user|assistant)\|>\n?")


def parse_chatml(text: str) -> list[dict]:
    if "<|im_start|>" not in text or text[:text.index("<|im_start|>")].strip():
        return []
    return [{"role": ROLE_ALIASES.get(r, r), "content": c} for r, c in CHATML_TURN.findall(text)]


def parse_zephyr(text: str) -> list[dict]:
    parts = ZEPHYR_TAG.split(text)  # ["before", role, content, role, content, ...]
    if len(parts) < 3 or parts[0].strip():
        return []
    return [{"role": role, "content": content.replace("</s>", "")}
            for role, content in zip(parts[1::2], parts[2::2])]


# Which roles may follow which: an optional system first, then user/assistant turns; tool results
# only answer an assistant's call, and the assistant speaks after them.
NEXT_ROLES = {"start": {"system", "user"}, "system": {"user"}, "user": {"assistant"},
              "assistant": {"user", "tool"}, "tool": {"tool", "assistant"}}
CONVERTERS = {"alpaca": from_alpaca, "prompt_completion": from_prompt_completion,
              "sharegpt": from_sharegpt, "messages": from_messages, "text": from_text}


def check_messages(messages: list[dict]) -> list[dict]:
    """Strip, drop an empty system prompt, and check the turn order a chat template expects."""
    messages = [{"role": m["role"], "content": m["content"].strip()} for m in messages]
    if messages and messages[0]["role"] == "system" and not messages[0]["content"]:
        messages = messages[1:]
    if not messages:
        raise BadRow("empty", "no messages")
    previous = "start"
    for n, m in enumerate(messages, 1):
        if not m["content"]:
            raise BadRow("empty", f"message {n} ({m['role']}) is empty")
        if m["role"] not in NEXT_ROLES[previous]:
            after = "at the start" if previous == "start" else f"after {previous}"
            raise BadRow("bad role order", f"message {n} is {m['role']} {after}")
        previous = m["role"]
    if previous != "assistant":
        raise BadRow("bad role order", f"the last message is {previous}, not assistant")
    return messages


def text_size(value: object) -> int:
    """Characters of every string in a parsed row, keys included (a loop, not recursion: rows nest)."""
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


def convert_row(row: object, fmt: str, auto: bool) -> list[dict] | str:
    """Messages (or plain text) for one row, or BadRow raised with the reason."""
    if isinstance(row, BadRow):
        raise row
    if not isinstance(row, dict):
        raise BadRow("not a dict", f"row is {type(row).__name__}, expected an object")
    if not row:
        raise BadRow("empty", "no fields")
    size = text_size(row)
    if size > MAX_ROW_CHARS:
        raise BadRow("row too large", too_long(size, MAX_ROW_CHARS))
    if "chosen" in row and "rejected" in row:
        raise BadRow("preference pair", "chosen/rejected rows are for preference training: use --method dpo, orpo or kto")
    found = detect_row_format(row)
    if auto and found is None:
        raise BadRow("unknown format", f"none of {', '.join(FORMAT_KEYS)}")
    if auto and found != fmt:
        raise BadRow("other format", f"row is {found}, the file is {fmt}")
    result = CONVERTERS[fmt](row)
    return result if isinstance(result, str) else check_messages(result)


# ----- the entry points ------------------------------------------------------------------------

def load_dataset(path: str | Path, format: str = "auto") -> tuple[list[Example], DatasetReport]:
    """Every trainable row of a file as messages, with a report of what was dropped and why."""
    converted, report = convert_file(path, format, FORMATS, detect_format, convert_row)
    examples = [Example(messages=[], row=number, text=result.strip()) if isinstance(result, str)
                else Example(messages=result, row=number) for number, result in converted]
    return examples, report


def convert_file(path: str | Path, format: str, formats: tuple, detect, convert) -> tuple[list, DatasetReport]:
    """(row number, convert(row, fmt, auto)) for each row it takes; the others, with the reason, in the report.
    Shared by SFT data and preference data (training.preference_data), which differ in formats only."""
    path = Path(path)
    if format not in formats:
        raise ArenaError(f"unknown dataset format '{format}': use one of {', '.join(formats)}")
    rows = read_rows(path, JSON_CELLS)
    if not rows:
        raise ArenaError(f"{path}: no rows")
    fmt = detect(rows, path) if format == "auto" else format
    report = DatasetReport(path=str(path), format=fmt, rows_total=len(rows))
    converted = []
    for number, row in rows:
        try:
            converted.append((number, convert(row, fmt, auto=format == "auto")))
        except BadRow as bad:
            report.drop(number, bad.kind, bad.detail)
    report.rows_kept = len(converted)
    if not converted:
        first_of_kind = {}
        for n, reason in report.bad_rows:
            first_of_kind.setdefault(reason.split(":")[0], f"row {n}: {reason}")
        first = "; ".join(list(first_of_kind.values())[:3])
        raise ArenaError(f"{path}: no usable rows as {fmt} ({first})")
    return converted, report


def split_examples(examples: list, validation_split: float, seed: int) -> tuple[list, list]:
    """A seeded, reproducible hold-out; each part keeps the file's order."""
    total = len(examples)
    if validation_split <= 0:
        return list(examples), []
    held = int(total * validation_split + 0.5)
    if held < 1 or held >= total:
        needed = rows_needed(validation_split)
        raise ArenaError(f"validation_split {validation_split} needs at least {needed} rows "
                         f"(one for validation, the rest for training); the data has {total}: "
                         "add rows, set validation_split 0 or give a validation_file")
    order = list(range(total))
    random.Random(seed).shuffle(order)
    val_ids = set(order[:held])
    train = [e for i, e in enumerate(examples) if i not in val_ids]
    val = [e for i, e in enumerate(examples) if i in val_ids]
    return train, val


def rows_needed(validation_split: float) -> int:
    total = 2
    while not 1 <= int(total * validation_split + 0.5) < total:
        total += 1
    return total

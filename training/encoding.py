"""Examples to token ids and labels, through the tokenizer's own chat template.

Which tokens carry loss is found without knowing the template: for each assistant message i the
conversation is rendered up to the generation prompt (messages[:i], add_generation_prompt=True) and
up to the end of that message (messages[:i+1]); the tokens between the two token-level prefixes are
that turn. Of those, the tokens of the answer text and the first special token after it (the
end-of-turn) carry loss; whitespace before the answer and what a template writes after the
end-of-turn (ChatML's newline) do not. This works the same for ChatML
(SmolLM2), Llama 3 headers and TinyLlama's zephyr tags.

Batches: `DataCollator` pads each batch to its longest row (use it with Trainer's group_by_length),
or `pack` fills blocks of max_length with whole examples.
"""
from __future__ import annotations

import dataclasses
import html
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from kernel.errors import ArenaError, first_line
from kernel.files import BadRow
from models.prompts import max_token_chars
from training.data import DatasetReport, Example, TokenStats

IGNORE = -100  # the label PyTorch's cross-entropy skips
CUT_SLACK_TOKENS = 8  # a cut may change how the word it falls in is tokenised: keep some tokens' worth more


@dataclass(eq=False)
class Encoded(Mapping):
    """One row as training sees it.

    It is also a read-only mapping {input_ids, labels}, because transformers' Trainer infers lengths
    for group_by_length only from dataset items that are mappings with an "input_ids" key.
    """

    input_ids: list[int]
    labels: list[int]  # IGNORE where the token carries no loss
    row: int
    truncated: bool = False

    FEATURES = ("input_ids", "labels")

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, key: str) -> list[int]:
        if key not in self.FEATURES:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self.FEATURES)

    def __len__(self) -> int:  # Mapping's size: the number of features, not of tokens
        return len(self.FEATURES)

    def to_feature(self) -> dict:
        return {"input_ids": self.input_ids, "labels": self.labels}


# ----- rendering -------------------------------------------------------------------------------

def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    # A base model without a template: the same plain transcript inference uses (models/prompts.py).
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
    return text + ("Assistant:" if add_generation_prompt else "")


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return ids | {i for i, token in decoder.items() if getattr(token, "special", False)}


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def fit_to_template(tokenizer, messages: list[dict]) -> list[dict]:
    """Tool results as user "Observation:" turns when the template would drop or reject tool messages.

    Tool-aware templates (ChatML, Llama 3) keep the `tool` role; zephyr-style templates silently skip
    roles they do not know, and strict ones raise, so the model would never see the tool's answer.
    """
    tools = [m["content"] for m in messages if m["role"] == "tool"]
    if not tools:
        return messages
    try:
        text = render(tokenizer, messages)
        if all(content in text for content in tools):
            return messages
    except Exception:  # noqa: BLE001 - jinja raises its own errors for roles it refuses
        pass
    fitted = []
    for m in messages:
        if m["role"] != "tool":
            fitted.append(m)
        elif fitted[-1]["role"] == "user":  # consecutive tool results: one user turn
            fitted[-1] = {"role": "user", "content": fitted[-1]["content"] + "\n\nObservation: " + m["content"]}
        else:
            fitted.append({"role": "user", "content": "Observation: " + m["content"]})
    return fitted


# ----- labels ----------------------------------------------------------------------------------

def chat_tokens(tokenizer, messages: list[dict], max_length: int | None = None) -> tuple[list[int], list[bool]]:
    """Token ids of the whole conversation and, per token, whether it belongs to an assistant answer.

    Answers that start past max_length are not looked for: truncation cuts them anyway, and each look
    renders the conversation up to it again (quadratic in the number of turns).
    """
    messages = fit_to_template(tokenizer, messages)
    full_text = render(tokenizer, messages)
    enc = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc.get("offset_mapping")
    answer = [False] * len(ids)
    specials = special_ids(tokenizer)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = common_prefix(token_ids(tokenizer, render(tokenizer, messages[:i], True)), ids)
        end = common_prefix(token_ids(tokenizer, render(tokenizer, messages[:i + 1])), ids)
        if end <= start:
            raise BadRow("chat template mismatch", f"message {i + 1} does not render as a prefix")
        first, stop = answer_span(start, end, message["content"], full_text, ids, offsets, specials)
        answer[first:stop] = [True] * (stop - first)
        if max_length is not None and end >= max_length:
            break
    return ids, answer


def answer_span(start, end, content, full_text, ids, offsets, specials) -> tuple[int, int]:
    """The tokens of one assistant turn [start, end) that carry loss: the answer text, then the first
    special token after it (the end-of-turn, so the model learns to stop). Header whitespace a
    template puts before the answer, and what it writes after the end-of-turn, carry none."""
    if not offsets:
        return start, end  # slow tokenizers give no offsets: the whole turn carries loss
    at = full_text.find(content, offsets[start][0])
    if at < 0 or at >= offsets[end - 1][1]:
        return start, end  # the template rewrote the answer: keep the whole turn
    content_end = at + len(content)
    first = start
    while first < end - 1 and offsets[first][1] <= at:
        first += 1
    after = first
    while after < end and offsets[after][0] < content_end:
        after += 1
    for k in range(after, end):
        if ids[k] in specials:
            return first, k + 1
    return first, end  # no special end-of-turn (plain transcript): what follows the answer ends it


def cut_to_fit(example: Example, max_length: int, token_chars: int) -> Example:
    """The example without what lies past its first max_length tokens, found before tokenising.

    No token stands for more than `token_chars` characters and every message is at least one token,
    so text past (max_length + slack) * token_chars characters, or past that many messages, is not
    among the first max_length tokens. Cut there, a row keeps those tokens as they were and is still
    over max_length, so it is truncated (or dropped) as before; a 10 MB row costs what max_length
    costs rather than 5 million tokens.
    """
    budget = (max_length + CUT_SLACK_TOKENS) * token_chars
    if example.text is not None:
        return example if len(example.text) <= budget else dataclasses.replace(example, text=example.text[:budget])
    if sum(len(m["content"]) for m in example.messages) <= budget and len(example.messages) <= max_length:
        return example
    kept = []
    for message in example.messages[:max_length + CUT_SLACK_TOKENS]:
        if budget <= 0:
            break
        kept.append({**message, "content": message["content"][:budget]})
        budget -= len(kept[-1]["content"])
    if not any(m["role"] == "assistant" for m in kept):
        raise BadRow("prompt longer than max_length", f"over {max_length} tokens before the first answer")
    return dataclasses.replace(example, messages=kept)


def full_encoding(example: Example, tokenizer, loss_on: str = "assistant", max_length: int | None = None,
                  token_chars: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one example: whole, or enough of it for max_length (see cut_to_fit)."""
    if max_length is not None:
        example = cut_to_fit(example, max_length, token_chars or max_token_chars(tokenizer))
    if example.text is not None:  # plain text: every token carries loss, and EOS ends the document
        ids = token_ids(tokenizer, example.text)
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        return ids, list(ids)
    try:
        ids, answer = chat_tokens(tokenizer, example.messages, max_length)
    except BadRow:
        raise
    except Exception as exc:  # noqa: BLE001 - a template's own error, e.g. roles it refuses
        raise BadRow("chat template error", first_line(exc))
    if loss_on == "all":
        return ids, list(ids)
    return ids, [t if keep else IGNORE for t, keep in zip(ids, answer)]


def fit_length(ids: list[int], labels: list[int], row: int, max_length: int, overlong: str) -> Encoded:
    """Truncate from the end (the prompt must survive) or refuse; BadRow says why a row cannot train."""
    first_loss = next((i for i, label in enumerate(labels) if label != IGNORE), None)
    if first_loss is None:
        raise BadRow("no loss tokens", "nothing in this row carries loss")
    if first_loss >= max_length:
        raise BadRow("prompt longer than max_length", f"{first_loss} prompt tokens, max_length {max_length}")
    if len(ids) <= max_length:
        return Encoded(ids, labels, row)
    if overlong == "drop":
        raise BadRow("longer than max_length", f"{len(ids)} tokens, max_length {max_length}")
    return Encoded(ids[:max_length], labels[:max_length], row, truncated=True)


def encode(example: Example, tokenizer, max_length: int, loss_on: str = "assistant",
           overlong: str = "truncate") -> Encoded | None:
    """One example as training sees it; None when it cannot train (encode_all reports why)."""
    check_options(loss_on, overlong)
    try:
        ids, labels = full_encoding(example, tokenizer, loss_on, max_length)
        return fit_length(ids, labels, example.row, max_length, overlong)
    except BadRow:
        return None


def check_options(loss_on: str, overlong: str) -> None:
    if loss_on not in ("assistant", "all"):
        raise ArenaError(f"loss_on must be assistant or all, not {loss_on!r}")
    if overlong not in ("truncate", "drop"):
        raise ArenaError(f"overlong must be truncate or drop, not {overlong!r}")


def encode_all(examples: list[Example], tokenizer, max_length: int = 512, loss_on: str = "assistant",
               overlong: str = "truncate", report: DatasetReport | None = None) -> tuple[list[Encoded], DatasetReport]:
    """Every example encoded; rows that cannot train are counted in the report, not raised.

    The report (a new one when none is given) gets the token statistics in `report.tokens`, the rows
    dropped here in dropped_by_reason and bad_rows, and rows_kept lowered by as many.
    """
    check_options(loss_on, overlong)
    if report is None:
        report = DatasetReport(path="", format="", rows_total=len(examples), rows_kept=len(examples))
    stats, encoded, lengths = TokenStats(max_length=max_length), [], []
    token_chars = max_token_chars(tokenizer)
    for example in examples:
        try:
            ids, labels = full_encoding(example, tokenizer, loss_on, max_length, token_chars)
            lengths.append(len(ids))
            stats.over_max_length += len(ids) > max_length
            item = fit_length(ids, labels, example.row, max_length, overlong)
        except BadRow as bad:
            report.drop(example.row, bad.kind, bad.detail)
            report.rows_kept -= 1
            stats.dropped += 1
            continue
        stats.truncated += item.truncated
        encoded.append(item)
    fill_lengths(stats, lengths)
    report.tokens = stats
    return encoded, report


def fill_lengths(stats: TokenStats, lengths: list[int]) -> None:
    if not lengths:
        return
    ordered = sorted(lengths)
    stats.rows = len(ordered)
    stats.min, stats.max = ordered[0], ordered[-1]
    stats.median = int(statistics.median(ordered))
    stats.p95 = ordered[math.ceil(0.95 * len(ordered)) - 1]  # nearest rank


# ----- what training sees ----------------------------------------------------------------------

def loss_runs(tokenizer, item: Encoded) -> list[tuple[bool, str]]:
    """The decoded text in runs of tokens that do or do not carry loss."""
    runs, current, flag = [], [], None
    for token, label in zip(item.input_ids, item.labels):
        carries = label != IGNORE
        if current and carries != flag:
            runs.append((flag, current))
            current = []
        current.append(token)
        flag = carries
    if current:
        runs.append((flag, current))
    return [(f, tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))
            for f, ids in runs]


def preview(examples: list[Example], tokenizer, n: int = 3, max_length: int = 512,
            loss_on: str = "assistant", overlong: str = "truncate") -> str:
    """HTML: the first n rows exactly as training sees them, tokens that carry loss in <mark>."""
    parts, token_chars = [], max_token_chars(tokenizer)
    for example in examples[:n]:
        try:
            ids, labels = full_encoding(example, tokenizer, loss_on, max_length, token_chars)
            item = fit_length(ids, labels, example.row, max_length, overlong)
        except BadRow as bad:
            parts.append(f"<h4>row {example.row}: not trained ({html.escape(str(bad))})</h4>")
            continue
        loss_count = sum(label != IGNORE for label in item.labels)
        note = f" · truncated from {len(ids)}" if item.truncated else ""
        body = "".join(f"<mark>{html.escape(text)}</mark>" if carries else html.escape(text)
                       for carries, text in loss_runs(tokenizer, item))
        parts.append(f"<h4>row {example.row} · {item.n_tokens} tokens · {loss_count} carry loss{note}</h4>"
                     f'<pre style="white-space: pre-wrap">{body}</pre>')
    return '<div class="training-preview">' + "\n".join(parts) + "</div>"


# ----- batches ---------------------------------------------------------------------------------

@dataclass
class DataCollator:
    """Pads each batch to its longest row: input_ids with pad, labels with IGNORE, attention_mask 0.

    Packed blocks (features with position_ids) get no attention_mask and use_cache=False instead:
    transformers then reads each restart of position_ids as an example boundary and masks attention
    between packed examples (it looks only when there is neither a mask nor a cache).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    @classmethod
    def for_tokenizer(cls, tokenizer, pad_to_multiple_of: int | None = None) -> "DataCollator":
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ArenaError("the tokenizer has neither a pad token nor an EOS token to pad with")
        return cls(pad_token_id=pad, pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, features: list) -> dict[str, torch.Tensor]:
        rows = list(features)  # Encoded rows and dicts alike: both are mappings
        width = max(len(r["input_ids"]) for r in rows)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = all("position_ids" in r for r in rows)
        batch = {"input_ids": [], "labels": [], "attention_mask": [], "position_ids": []}
        for r in rows:
            pad = width - len(r["input_ids"])
            batch["input_ids"].append(list(r["input_ids"]) + [self.pad_token_id] * pad)
            batch["labels"].append(list(r["labels"]) + [IGNORE] * pad)
            batch["attention_mask"].append([1] * len(r["input_ids"]) + [0] * pad)
            if packed:  # padding as one more "example" of its own, which nothing attends to
                batch["position_ids"].append(list(r["position_ids"]) + list(range(pad)))
        del batch["attention_mask" if packed else "position_ids"]
        tensors: dict = {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
        if packed:
            tensors["use_cache"] = False  # Trainer passes the batch as keyword arguments to the model
        return tensors


def pack(encoded: list[Encoded], max_length: int) -> list[dict]:
    """Whole examples concatenated, in order, into blocks of at most max_length tokens.

    position_ids restart at 0 for every example. With DataCollator (no attention_mask, no cache for
    packed blocks) transformers masks attention between examples; with an attention_mask of ones or
    a cache, examples in a block would attend to the ones before them. The first label of each example is IGNORE
    so no example is trained to follow from the previous one.
    """
    blocks, block = [], {"input_ids": [], "labels": [], "position_ids": []}
    for item in encoded:
        if item.n_tokens > max_length:
            raise ArenaError(f"row {item.row}: {item.n_tokens} tokens do not fit a block of {max_length}")
        if block["input_ids"] and len(block["input_ids"]) + item.n_tokens > max_length:
            blocks.append(block)
            block = {"input_ids": [], "labels": [], "position_ids": []}
        block["input_ids"] += item.input_ids
        block["labels"] += [IGNORE] + item.labels[1:]
        block["position_ids"] += list(range(item.n_tokens))
    if block["input_ids"]:
        blocks.append(block)
    return blocks

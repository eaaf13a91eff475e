"""Templates for teacher-generated training data: what to ask about each input text, the JSON the
answer must be (a pydantic schema) and the alpaca rows a validated answer becomes.

Built in: review_replies (an agreeing and a disagreeing reply, two rows per text), qa_pairs (a
question the text answers and its answer) and instruction (an instruction, input and output).
A custom template is a .json/.yaml file with `prompt` (containing {text}), `fields` (the answer's
required text fields, made into a schema with pydantic's `create_model`) and optionally `rows`
(alpaca rows built from {text} and {field} placeholders). `load_template` takes either.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Callable

import yaml
from pydantic import BaseModel, StringConstraints, create_model

from kernel.errors import ArenaError, first_line
from kernel.files import read_text

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]  # an empty answer teaches nothing
AGREE = "Write a reply that agrees with this review."
DISAGREE = "Write a reply that disagrees with this review."
ROW_KEYS = ("instruction", "input", "output")
PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Template:
    """What to ask about each text, the JSON the answer must be, and the alpaca rows it becomes."""

    name: str
    prompt: str  # "{text}" stands for the input text; other braces are left as written
    schema: type[BaseModel]
    to_rows: Callable[[BaseModel, str], list[dict]]  # (validated answer, input text) -> alpaca rows

    def request(self, text: str) -> str:
        keys = ", ".join(f'"{name}"' for name in self.schema.model_fields)
        return f"{self.prompt.replace('{text}', text)}\n\nReply with JSON only: one object with the text fields {keys}."


def alpaca(instruction: str, input_text: str, output: str) -> dict:
    return {"instruction": instruction, "input": input_text, "output": output}


ReviewReplies = create_model("ReviewReplies", agree=(Text, ...), disagree=(Text, ...))
QAPair = create_model("QAPair", question=(Text, ...), answer=(Text, ...))
InstructionRow = create_model("InstructionRow", instruction=(Text, ...), input=(str, ""), output=(Text, ...))


BUILTIN_TEMPLATES = MappingProxyType({
    "review_replies": Template(
        "review_replies",
        "Here is a product review:\n\n{text}\n\nWrite two short replies to it, as another customer would: "
        '"agree", a reply that agrees with the review, and "disagree", a reply that disagrees with it.',
        ReviewReplies,
        lambda a, text: [alpaca(AGREE, text, a.agree), alpaca(DISAGREE, text, a.disagree)]),
    "qa_pairs": Template(
        "qa_pairs",
        "Here is a text:\n\n{text}\n\nWrite one question that this text answers (\"question\") and its "
        'answer using only what the text says ("answer").',
        QAPair,
        lambda a, text: [alpaca(a.question, text, a.answer)]),
    "instruction": Template(
        "instruction",
        "Here is a text:\n\n{text}\n\nBased on it, write one task a user might give an assistant "
        '("instruction"), the material the task needs or an empty string ("input"), and the ideal '
        'response ("output").',
        InstructionRow,
        lambda a, text: [alpaca(a.instruction, a.input, a.output)]),
})


def load_template(spec: str) -> Template:
    """A built-in template by name, or a .json/.yaml file: prompt, fields and optionally rows."""
    if spec in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[spec]
    path = Path(spec)
    if not path.is_file():
        raise ArenaError(f"unknown template '{spec}': use {', '.join(BUILTIN_TEMPLATES)} or a .json/.yaml file")
    return template_from_file(path, read_template_file(path))


def read_template_file(path: Path) -> dict:
    text = read_text(path, empty_ok=False)
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ArenaError(f"{path}: not valid {path.suffix[1:] or 'YAML'} ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise ArenaError(f"{path}: a template is a mapping with prompt and fields")
    return data


def template_from_file(path: Path, data: dict) -> Template:
    """prompt: text with {text}; fields: required text fields of the answer; rows (optional): alpaca
    rows made from {text} and {field} placeholders, by default the fields instruction, input, output."""
    prompt, fields = data.get("prompt"), data.get("fields")
    if not isinstance(prompt, str) or "{text}" not in prompt:
        raise ArenaError(f"{path}: 'prompt' must be text that contains {{text}}")
    if not (isinstance(fields, list) and fields and all(
            isinstance(f, str) and f.isidentifier() and not f.startswith(("_", "model_")) for f in fields)):
        raise ArenaError(f"{path}: 'fields' must be a list of names such as [question, answer]")
    if "rows" not in data and not {"instruction", "output"} <= set(fields):
        raise ArenaError(f"{path}: give 'rows' (alpaca rows from {{text}} and the fields) "
                         "or name the fields instruction and output")
    rows = data.get("rows") or [{key: f"{{{key}}}" for key in ROW_KEYS if key in fields}]
    check_rows(path, rows, {"text", *fields})
    schema = create_model("CustomAnswer", **{name: (Text, ...) for name in fields})
    return Template(str(path.resolve()), prompt, schema,
                    lambda answer, text: [fill_row(row, {**answer.model_dump(), "text": text}) for row in rows])


def check_rows(path: Path, rows, known: set[str]) -> None:
    if not isinstance(rows, list):
        raise ArenaError(f"{path}: 'rows' must be a list of {{instruction, input, output}} mappings")
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or set(row) - set(ROW_KEYS) or not all(isinstance(v, str) for v in row.values()):
            raise ArenaError(f"{path}: rows item {n} must map instruction, input, output to text")
        if not row.get("instruction") or not row.get("output"):
            raise ArenaError(f"{path}: rows item {n} needs instruction and output")
        unknown = {m for v in row.values() for m in PLACEHOLDER.findall(v)} - known
        if unknown:
            raise ArenaError(f"{path}: rows item {n} uses {{{sorted(unknown)[0]}}}, not text or one of the fields")


def fill_row(row: dict, values: dict) -> dict:
    """Each {name} replaced by its value; the answers' own braces are never read as placeholders."""
    return {key: PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), row.get(key, "")) for key in ROW_KEYS}

"""Test suites for before/after evaluation: one JSONL case per line, each with the checks its answer must pass.

A suite is written by hand, so it will have mistakes. A bad line is reported (line number and reason)
and skipped; the rest still runs, so one typo does not throw away a whole evaluation. Only a suite
with no usable case at all is an error. The check types and their fields are documented in
`CHECK_FIELDS` below; how each is scored lives in `evaluation.checks`.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.checks import parse_number
from models.config import ArenaError

MESSAGE_ROLES = ("system", "user", "assistant", "tool")
CASE_FIELDS = ("id", "category", "prompt", "messages", "system", "tools", "check", "checks")
PROBLEMS_IN_ERROR = 3  # enough to show the pattern of a broken file without a wall of text

# Every field a check type accepts (besides "type"). A field outside this list is almost always a typo
# ("treshold"), which would otherwise silently fall back to a default, so it is reported.
CHECK_FIELDS: dict[str, tuple[str, ...]] = {
    "contains": ("value", "ignore_case"),
    "exact": ("value", "ignore_case"),
    "regex": ("value", "ignore_case"),
    "numeric": ("answer", "tolerance"),
    "choice": ("choices", "answer"),
    "function_call": ("calls",),
    "refusal": ("should_refuse",),
    "max_words": ("value",),
    "min_words": ("value",),
    "json": ("required_keys",),
    "rouge_l": ("reference", "threshold"),
    "bleu": ("reference", "threshold"),
    "bertscore": ("reference", "threshold", "model"),
    "judge": ("rubric", "threshold", "reference"),
}
JUDGE_SCORES = tuple(f"score{n}_description" for n in range(1, 6))


@dataclass
class Case:
    """One test: the conversation sent to the model and the checks its answer must pass.

    messages: {role, content} turns ending with the user's turn (a `prompt` becomes one user turn).
    tools: JSON-schema function specs ({name, description, parameters}), OpenAI wrappers removed.
    line: where the case is in its suite file, so results can point back to it.
    """

    id: str | int
    category: str
    messages: list[dict]
    system: str | None = None
    tools: list[dict] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    line: int = 0


@dataclass
class Problem:
    """A line of the suite that was skipped, and why."""

    line: int
    reason: str


@dataclass
class SuiteLoad:
    """The usable cases of a suite file, plus every line that had to be skipped."""

    cases: list[Case]
    problems: list[Problem]
    path: Path
    name: str


# --- field helpers: each returns a reason, or "" when the field is fine ---------------------------------------

def is_number(value) -> bool:
    """A JSON number (bool is an int in Python, but `true` is not a number in a suite)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def need_str(check: dict, name: str) -> str:
    value = check.get(name)
    if not isinstance(value, str) or not value.strip():
        return f"'{name}' must be a non-empty string"
    return ""


def optional_bool(check: dict, name: str) -> str:
    if name in check and not isinstance(check[name], bool):
        return f"'{name}' must be true or false"
    return ""


def number_in(check: dict, name: str, low: float, high: float, required: bool) -> str:
    if name not in check:
        return f"'{name}' is required" if required else ""
    if not is_number(check[name]) or not low <= check[name] <= high:
        return f"'{name}' must be a number between {low:g} and {high:g}"
    return ""


def first_reason(*reasons: str) -> str:
    return next((reason for reason in reasons if reason), "")


# --- one validator per check type -----------------------------------------------------------------------------

def validate_text_match(check: dict) -> str:
    value = check.get("value")
    if check["type"] == "contains" and isinstance(value, list):
        if not value or not all(isinstance(v, str) and v for v in value):
            return "'value' must be a non-empty string or a list of them"
    elif reason := need_str(check, "value"):
        return reason
    if check["type"] == "regex":
        try:
            re.compile(value)
        except re.error as exc:
            return f"'value' is not a valid regular expression ({exc})"
    return optional_bool(check, "ignore_case")


def validate_numeric(check: dict) -> str:
    answer = check.get("answer")
    if not is_number(answer) and not (isinstance(answer, str) and parse_number(answer) is not None):
        return "'answer' must be a number or a numeric string"
    return number_in(check, "tolerance", 0.0, math.inf, required=False)


def validate_choice(check: dict) -> str:
    choices = check.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        return "'choices' must be a list of at least two non-empty strings"
    answer = check.get("answer")
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        return f"'answer' must be the index of the right choice (0 to {len(choices) - 1})"
    return ""


def validate_calls(check: dict) -> str:
    calls = check.get("calls")
    if not isinstance(calls, list) or not calls:
        return "'calls' must be a non-empty list of {name, arguments}"
    for index, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
            return f"'calls[{index}]' must be an object with a 'name'"
        arguments = call.get("arguments", {})
        if not isinstance(arguments, dict):
            return f"'calls[{index}].arguments' must be an object of argument -> allowed values"
        for arg, allowed in arguments.items():
            if not isinstance(allowed, list) or not allowed:
                return f"'calls[{index}].arguments.{arg}' must be a non-empty list of allowed values"
    return ""


def validate_refusal(check: dict) -> str:
    if not isinstance(check.get("should_refuse"), bool):
        return "'should_refuse' must be true or false"
    return ""


def validate_word_count(check: dict) -> str:
    value = check.get("value")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return "'value' must be a whole number of words (0 or more)"
    return ""


def validate_json(check: dict) -> str:
    keys = check.get("required_keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        return "'required_keys' must be a list of strings"
    return ""


def validate_similarity(check: dict) -> str:
    high = 100.0 if check["type"] == "bleu" else 1.0
    reasons = [need_str(check, "reference"), number_in(check, "threshold", 0.0, high, required=True)]
    if "model" in check:
        reasons.append(need_str(check, "model"))
    return first_reason(*reasons)


def validate_rubric(rubric) -> str:
    if isinstance(rubric, str):
        return "" if rubric.strip() else "'rubric' must not be empty"
    if not isinstance(rubric, dict):
        return "'rubric' must be a string or an object {criteria, score1_description..score5_description}"
    for key in ("criteria",) + JUDGE_SCORES:
        if not isinstance(rubric.get(key), str) or not rubric[key].strip():
            return f"'rubric.{key}' must be a non-empty string"
    return ""


def validate_judge(check: dict) -> str:
    reasons = [validate_rubric(check.get("rubric")), number_in(check, "threshold", 1.0, 5.0, required=False)]
    if "reference" in check:
        reasons.append(need_str(check, "reference"))
    return first_reason(*reasons)


VALIDATORS = {
    "contains": validate_text_match, "exact": validate_text_match, "regex": validate_text_match,
    "numeric": validate_numeric, "choice": validate_choice, "function_call": validate_calls,
    "refusal": validate_refusal, "max_words": validate_word_count, "min_words": validate_word_count,
    "json": validate_json, "rouge_l": validate_similarity, "bleu": validate_similarity,
    "bertscore": validate_similarity, "judge": validate_judge,
}


def validate_check(check: dict) -> str:
    """Why this check cannot be run ('' when it is fine): unknown type, missing field, wrong type, bad value."""
    if not isinstance(check, dict):
        return "a check must be an object with a 'type'"
    kind = check.get("type")
    if not isinstance(kind, str) or not kind:
        return "a check needs a 'type'"
    if kind not in CHECK_FIELDS:
        return f"unknown check type '{kind}' (known: {', '.join(CHECK_FIELDS)})"
    extra = sorted(set(check) - set(CHECK_FIELDS[kind]) - {"type"})
    if extra:
        return f"unknown field '{extra[0]}' for a {kind} check (allowed: {', '.join(CHECK_FIELDS[kind])})"
    return VALIDATORS[kind](check)


# --- cases ------------------------------------------------------------------------------------------------------

def case_messages(row: dict) -> tuple[list[dict] | None, str]:
    """The conversation of a row, from `prompt` or `messages`, or the reason it has none."""
    if "prompt" in row and "messages" in row:
        return None, "give either 'prompt' or 'messages', not both"
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            return None, "'prompt' must be a non-empty string"
        return [{"role": "user", "content": row["prompt"]}], ""
    messages = row.get("messages")
    if messages is None:
        return None, "needs a 'prompt' string or a 'messages' list"
    if not isinstance(messages, list) or not messages:
        return None, "'messages' must be a non-empty list of {role, content}"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in MESSAGE_ROLES \
                or not isinstance(message.get("content"), str):
            return None, f"'messages[{index}]' must be {{role, content}} with role one of {', '.join(MESSAGE_ROLES)}"
    return [{"role": m["role"], "content": m["content"]} for m in messages], ""


def normalize_tool(tool) -> dict | None:
    """A function spec, unwrapping OpenAI's {"type": "function", "function": {...}}; None if it is not one."""
    if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
        tool = tool["function"]
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
        return None
    parameters = tool.get("parameters", {})
    if not isinstance(parameters, dict) or not isinstance(parameters.get("properties", {}), dict) \
            or not isinstance(parameters.get("required", []), list):
        return None
    return tool


def case_tools(row: dict) -> tuple[list[dict], str]:
    tools = row.get("tools", [])
    if not isinstance(tools, list):
        return [], "'tools' must be a list of function specs"
    normalized = [normalize_tool(tool) for tool in tools]
    for index, tool in enumerate(normalized):
        if tool is None:
            return [], f"'tools[{index}]' needs a 'name' and 'parameters' {{properties: object, required: list}}"
    return normalized, ""


def row_checks(row: dict) -> tuple[list[dict], str]:
    if "check" in row and "checks" in row:
        return [], "give either 'check' or 'checks', not both"
    checks = [row["check"]] if "check" in row else row.get("checks")
    if not isinstance(checks, list) or not checks:
        return [], "needs a 'check' object or a non-empty 'checks' list"
    return checks, ""


def calls_match_tools(check: dict, tools: list[dict]) -> str:
    """Expected calls must name one of the case's tools and only arguments that tool has."""
    if not tools:
        return "needs the case's 'tools' (the functions the model may call)"
    specs = {tool["name"]: tool for tool in tools}
    for index, call in enumerate(check["calls"]):
        spec = specs.get(call["name"])
        if spec is None:
            return f"'calls[{index}].name' '{call['name']}' is not one of the tools ({', '.join(specs)})"
        parameters = spec.get("parameters", {})
        listed = call.get("arguments", {})
        unknown = [arg for arg in listed if parameters.get("properties") and arg not in parameters["properties"]]
        if unknown:
            return f"'calls[{index}].arguments.{unknown[0]}' is not a parameter of '{call['name']}'"
        # a required argument the call does not list could never be given without being "unexpected"
        unlisted = [arg for arg in parameters.get("required", []) if arg not in listed]
        if unlisted:
            return f"'calls[{index}].arguments' lacks '{unlisted[0]}', which '{call['name']}' requires"
    return ""


def checks_reason(checks: list, tools: list[dict]) -> str:
    for index, check in enumerate(checks, 1):
        reason = validate_check(check)
        if not reason and check["type"] == "function_call":
            reason = calls_match_tools(check, tools)
        if reason:
            kind = check.get("type") if isinstance(check, dict) and isinstance(check.get("type"), str) else "?"
            return f"check {index} ({kind}): {reason}"
    return ""


def parse_case(row: dict, line: int) -> tuple[Case | None, str]:
    """A Case from one suite row, or the reason the row cannot be used."""
    case_id = row.get("id")
    if isinstance(case_id, bool) or not isinstance(case_id, (str, int)) or case_id == "":
        return None, "needs an 'id' (a string or an integer)"
    if not isinstance(row.get("category"), str) or not row["category"].strip():
        return None, "needs a 'category' string"
    if "system" in row and not isinstance(row["system"], str):
        return None, "'system' must be a string"
    messages, reason = case_messages(row)
    tools, tools_reason = case_tools(row)
    checks, checks_missing = row_checks(row)
    reason = first_reason(reason, tools_reason, checks_missing) or checks_reason(checks, tools)
    if reason:
        return None, reason
    case = Case(id=case_id, category=row["category"], messages=messages, system=row.get("system"),
                tools=tools, checks=checks, line=line)
    return case, ""


def read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise ArenaError(f"{path}: no such suite file")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ArenaError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def parse_row(text: str) -> tuple[dict | None, str]:
    try:
        row = json.loads(text)
    except ValueError as exc:
        return None, f"not valid JSON ({getattr(exc, 'msg', exc)})"
    if not isinstance(row, dict):
        return None, "expected a JSON object (one case per line)"
    return row, ""


def no_case_error(path: Path, problems: list[Problem]) -> ArenaError:
    if not problems:
        return ArenaError(f"{path}: the suite has no cases")
    shown = "; ".join(f"line {p.line}: {p.reason}" for p in problems[:PROBLEMS_IN_ERROR])
    more = f"; and {len(problems) - PROBLEMS_IN_ERROR} more" if len(problems) > PROBLEMS_IN_ERROR else ""
    return ArenaError(f"{path}: no valid case in the suite ({shown}{more})")


def load_suite(path: str | Path) -> SuiteLoad:
    """Every usable case of a JSONL suite; bad lines are listed in `problems`, not fatal, unless none is usable."""
    path = Path(path)
    cases: list[Case] = []
    problems: list[Problem] = []
    first_line_of: dict[str, int] = {}  # ids compared as text: 7 and "7" would be the same row in a report
    for number, text in enumerate(read_lines(path), 1):
        if not text.strip():
            continue
        row, reason = parse_row(text)
        case, reason = parse_case(row, number) if row is not None else (None, reason)
        if case is not None and str(case.id) in first_line_of:
            case, reason = None, f"duplicate id '{case.id}' (first on line {first_line_of[str(case.id)]})"
        if case is None:
            problems.append(Problem(number, reason))
            continue
        first_line_of[str(case.id)] = number
        cases.append(case)
    if not cases:
        raise no_case_error(path, problems)
    return SuiteLoad(cases=cases, problems=problems, path=path, name=path.stem)

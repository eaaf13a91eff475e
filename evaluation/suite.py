"""Test suites for before/after evaluation: one JSONL case per line, each with the checks its answer must pass.

A suite is written by hand, so it will have mistakes. A bad line is reported (line number and reason)
and skipped; the rest still runs, so one typo does not throw away a whole evaluation. Only a suite
with no usable case at all is an error. A line that loads but may not score as its author expects
(an allowed value of another type than the tool's schema declares) is kept, with a note. The check types, their fields and how each is scored are
registered in `evaluation.check_types.CHECK_TYPES`.

A case with `turns` (MT-bench's two questions) is a conversation: the first turn is asked, then each
next one after the model's own answer, and every turn's answer is checked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from evaluation.case import Case
from evaluation.check_fields import first_reason
from evaluation.check_types import LIKELIHOOD, check_notes, check_type, validate_check
from kernel.errors import ArenaError
from kernel.files import BadRow, json_lines, read_text

MESSAGE_ROLES = ("system", "user", "assistant", "tool")
MAX_SUITE_BYTES = 64 * 2**20  # MT-bench is 0.1 MB; a suite is read whole on every run
MAX_CASE_CHARS = 2**20  # one case's line: far more than any model's context holds
PROBLEMS_IN_ERROR = 3  # enough to show the pattern of a broken file without a wall of text


@dataclass
class Problem:
    """A line of the suite that was skipped, and why."""

    line: int
    reason: str


@dataclass
class SuiteLoad:
    """The usable cases of a suite file, plus every line that had to be skipped, and notes on kept lines."""

    cases: list[Case]
    problems: list[Problem]
    path: Path
    name: str
    notes: list[Problem] = field(default_factory=list)


# --- cases ------------------------------------------------------------------------------------------------------

def strings(row: dict, name: str) -> tuple[list[str], str]:
    value = row.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        return [], f"'{name}' must be a list of non-empty strings"
    return value, ""


def case_turns(row: dict) -> tuple[list[str], list[str], str]:
    """(follow-up user turns, reference answer per turn, reason) from `turns` and `reference_turns`."""
    turns, reason = strings(row, "turns")
    references, references_reason = strings(row, "reference_turns")
    reason = reason or references_reason
    if reason or "turns" not in row:
        return [], references, reason
    if not turns:
        return [], [], "'turns' must hold at least one question"
    if "messages" in row:
        return [], [], "give either 'turns' or 'messages', not both"
    if "prompt" in row and row["prompt"] != turns[0]:
        return [], [], "'prompt' and 'turns[0]' differ: give one of them, or the same text"
    return turns[1:], references, ""


def case_messages(row: dict) -> tuple[list[dict] | None, str]:
    """The conversation of a row, from `prompt`, `turns` or `messages`, or the reason it has none."""
    if "prompt" in row and "messages" in row:
        return None, "give either 'prompt' or 'messages', not both"
    if "prompt" not in row and isinstance(row.get("turns"), list) and row["turns"]:
        row = {**row, "prompt": row["turns"][0]}  # case_turns says what is wrong with bad turns
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            return None, "'prompt' must be a non-empty string"
        return [{"role": "user", "content": row["prompt"]}], ""
    messages = row.get("messages")
    if messages is None:
        return None, "needs a 'prompt' string, a 'turns' list or a 'messages' list"
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


def checks_reason(checks: list, tools: list[dict]) -> str:
    for index, check in enumerate(checks, 1):
        reason = validate_check(check, tools)
        if reason:
            kind = check.get("type") if isinstance(check, dict) and isinstance(check.get("type"), str) else "?"
            return f"check {index} ({kind}): {reason}"
    return ""


def single_answer_reason(checks: list[dict]) -> str:
    """Why these checks cannot score a conversation of several turns ('' if they can)."""
    for check in checks:
        if check_type(check).scored_by == LIKELIHOOD:
            return f"a '{check['type']}' check scores one answer's likelihood: it cannot be used with several 'turns'"
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
    followups, references, turns_reason = case_turns(row)
    reason = first_reason(turns_reason, reason, tools_reason, checks_missing) or checks_reason(checks, tools)
    if not reason and followups:
        reason = single_answer_reason(checks)
    if reason:
        return None, reason
    case = Case(id=case_id, category=row["category"], messages=messages, system=row.get("system"),
                tools=tools, checks=checks, line=line, followups=followups, reference_turns=references)
    return case, ""


def case_notes(case: Case) -> list[Problem]:
    return [Problem(case.line, f"check {index} ({check['type']}): {note}")
            for index, check in enumerate(case.checks, 1) for note in check_notes(check, case.tools)]


def parse_row(value: object) -> tuple[dict | None, str]:
    if isinstance(value, BadRow):
        if value.kind == "line too long":
            return None, f"the line is {value.detail}"
        return None, f"{value.kind} ({value.detail})"
    if not isinstance(value, dict):
        return None, "expected a JSON object (one case per line)"
    return value, ""


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
    notes: list[Problem] = []
    first_line_of: dict[str, int] = {}  # ids compared as text: 7 and "7" would be the same row in a report
    for number, value in json_lines(read_text(path, "suite file", max_bytes=MAX_SUITE_BYTES), MAX_CASE_CHARS):
        row, reason = parse_row(value)
        case, reason = parse_case(row, number) if row is not None else (None, reason)
        if case is not None and str(case.id) in first_line_of:
            case, reason = None, f"duplicate id '{case.id}' (first on line {first_line_of[str(case.id)]})"
        if case is None:
            problems.append(Problem(number, reason))
            continue
        first_line_of[str(case.id)] = number
        cases.append(case)
        notes += case_notes(case)
    if not cases:
        raise no_case_error(path, problems)
    return SuiteLoad(cases=cases, problems=problems, path=path, name=path.stem, notes=notes)

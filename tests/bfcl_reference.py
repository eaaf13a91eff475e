"""Our `function_call` verdicts beside BFCL's own AST checker, on BFCL v4's own items.

The reference is the PyPI package `bfcl-eval` (Apache-2.0, gorilla's berkeley-function-call-leaderboard),
installed with --no-deps: its data files are read from the installed package at test time (nothing is
copied here) and only its checker module is imported (the package's model handlers pull in every vendor
SDK; the checker needs one table from them, which `bfcl_checker` supplies).

For every item of the four single-turn Python categories, candidate answers are built from the item's
possible answer: the correct call, a wrong value, a missing or an extra argument, a wrong name, a
string for an integer, optional arguments left out, parallel calls reordered, ... Each is given to
BFCL's checker as the decoded call it checks, and to ours written out as plain JSON, in a code fence,
in prose, as OpenAI tool_calls and as Python (BFCL's own prompt format).

    python -m tests.bfcl_reference      # prints the agreement table (the figures in the README)
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import sys
import types
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from evaluation.check_types import run_check
from evaluation.importers import import_bfcl

CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple")
MODEL_NAME = "arena-reference"  # a name for BFCL's model table: keep dotted function names as they are


def data_dir() -> Path | None:
    spec = importlib.util.find_spec("bfcl_eval")
    return Path(spec.origin).parent / "data" if spec else None


def bfcl_checker():
    """BFCL's `ast_checker` and its `Language` enum, importing only the checker's own modules."""
    if "bfcl_eval.constants.model_config" not in sys.modules:
        table = types.ModuleType("bfcl_eval.constants.model_config")
        table.MODEL_CONFIG_MAPPING = {MODEL_NAME.replace("_", "/"): types.SimpleNamespace(underscore_to_dot=False)}
        sys.modules[table.__name__] = table
    checker = importlib.import_module("bfcl_eval.eval_checker.ast_eval.ast_checker")
    return checker.ast_checker, importlib.import_module("bfcl_eval.constants.enums").Language


def bfcl_verdict(item: dict, calls: list[dict], category: str) -> bool:
    ast_checker, language = bfcl_checker()
    model_output = [{call["name"]: call["arguments"]} for call in calls]
    return bool(ast_checker(item["tools"], model_output, item["truth"], language.PYTHON, category, MODEL_NAME)["valid"])


# --- candidate answers ----------------------------------------------------------------------------------------

def first_allowed(allowed: list):
    return next((value for value in allowed if value != ""), "")


def gold_value(value):
    """A concrete value from an allowed one: BFCL's nested form {key: [allowed]} gives its first choices."""
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        return {k: gold_value(first_allowed(v)) for k, v in value.items() if first_allowed(v) != ""}
    if isinstance(value, list):
        return [gold_value(v) for v in value]
    return value


def correct_calls(item: dict, optional: bool = True) -> list[dict]:
    """Each expected call with the first allowed value of each argument; optional ones only if asked, and
    never one the tool does not have (two items list such an argument as optional)."""
    calls = []
    for call in item["truth"]:
        (name, arguments), = call.items()
        given = {arg: gold_value(first_allowed(allowed)) for arg, allowed in arguments.items()
                 if first_allowed(allowed) != "" and (optional or "" not in allowed) and arg in schema_of(item, name)}
        calls.append({"name": name, "arguments": given})
    return calls


def changed(value):
    """A different value of the same type, or None where there is no obvious one."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 7
    if isinstance(value, float):
        return value + 1.5
    if isinstance(value, str):
        return value + " Springfield"
    return None


def schema_of(item: dict, name: str) -> dict:
    spec = next((tool for tool in item["tools"] if tool["name"] == name), {})
    return spec.get("parameters", {}).get("properties", {})


def first_argument(calls: list[dict], test) -> tuple[int, str] | None:
    for index, call in enumerate(calls):
        for arg, value in call["arguments"].items():
            if test(call["name"], arg, value):
                return index, arg
    return None


def with_argument(calls: list[dict], where: tuple[int, str] | None, value=None, drop=False) -> list[dict] | None:
    """The calls with one argument dropped or replaced ("as-float", "drop-first-key": derived from its value)."""
    if where is None:
        return None
    calls = copy.deepcopy(calls)
    arguments = calls[where[0]]["arguments"]
    if drop:
        del arguments[where[1]]
    elif value == "as-float":
        arguments[where[1]] = float(arguments[where[1]])
    elif value == "drop-first-key":
        del arguments[where[1]][next(iter(arguments[where[1]]))]
    else:
        arguments[where[1]] = value
    return calls


def restyle(value):
    """The same value as BFCL's standardize_string reads it, written differently: "New York, NY." -> "NEW_YORK NY"."""
    if isinstance(value, str):
        return value.upper().replace(" ", "_").replace(".", "").replace(",", " ")
    if isinstance(value, list):
        return [restyle(v) for v in value]
    if isinstance(value, dict):
        return {k: restyle(v) for k, v in value.items()}
    return value


def restyled(gold: list[dict], test) -> list[dict] | None:
    where = first_argument(gold, lambda n, a, v: test(v))
    return with_argument(gold, where, restyle(value_at(gold, where)) if where else None)


def candidates(item: dict) -> dict[str, list[dict]]:
    """Named candidate answers for one item (kinds that do not apply to it are left out)."""
    gold = correct_calls(item)
    kind = lambda name, arg: schema_of(item, name).get(arg, {}).get("type")  # noqa: E731
    scalar = first_argument(gold, lambda n, a, v: changed(v) is not None)
    found = {
        "correct": gold,
        "optional left out": correct_calls(item, optional=False),
        "wrong value": with_argument(gold, scalar, changed(value_at(gold, scalar))),
        "missing argument": with_argument(gold, first_argument(gold, lambda n, a, v: True), drop=True),
        "extra argument": with_argument(gold, (0, "unexpected_argument"), "yes") if gold else None,
        "wrong name": [{**gold[0], "name": gold[0]["name"] + "_v2"}] + gold[1:],
        "string restyled": restyled(gold, lambda v: isinstance(v, str) and restyle(v) != v),
        "strings in a list restyled": restyled(gold, lambda v: isinstance(v, list) and v and all(
            isinstance(x, str) for x in v) and restyle(v) != v),
        "object values restyled": restyled(gold, lambda v: isinstance(v, dict) and restyle(v) != v),
        "object key missing": with_argument(gold, first_argument(gold, lambda n, a, v: isinstance(v, dict) and v),
                                            "drop-first-key"),
        "string for an integer": string_for_integer(gold, kind),
        "float for an integer": with_argument(gold, first_argument(gold, lambda n, a, v: kind(n, a) == "integer"
                                                                   and type(v) is int), "as-float"),
        "integer for a float": with_number_type(gold, kind, "float", int),
        "integers in a float array": ints_in_float_array(item, gold),
        "parallel reordered": gold[::-1] if len(gold) > 1 else None,
        "one call missing": gold[:-1] if len(gold) > 1 else None,
    }
    if found["optional left out"] == gold:
        del found["optional left out"]
    return {name: calls for name, calls in found.items() if calls is not None}


def value_at(calls: list[dict], where: tuple[int, str] | None):
    return calls[where[0]]["arguments"][where[1]] if where else None


def string_for_integer(gold: list[dict], kind) -> list[dict] | None:
    where = first_argument(gold, lambda n, a, v: kind(n, a) == "integer" and type(v) is int)
    return with_argument(gold, where, str(value_at(gold, where)))


def with_number_type(gold: list[dict], kind, declared: str, convert) -> list[dict] | None:
    where = first_argument(gold, lambda n, a, v: kind(n, a) == declared and isinstance(v, float) and v.is_integer())
    return with_argument(gold, where, convert(value_at(gold, where)) if where else None)


def ints_in_float_array(item: dict, gold: list[dict]) -> list[dict] | None:
    def is_float_array(name, arg, value):
        schema = schema_of(item, name).get(arg, {})
        return (schema.get("type") == "array" and schema.get("items", {}).get("type") == "float" and
                isinstance(value, list) and value and all(isinstance(v, float) and v.is_integer() for v in value))
    where = first_argument(gold, is_float_array)
    return with_argument(gold, where, [int(v) for v in value_at(gold, where)] if where else None)


# --- how a model may write them -------------------------------------------------------------------------------

def as_json(calls: list[dict]) -> str:
    return json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)


def as_python(calls: list[dict]) -> str:
    written = [f"{call['name']}({', '.join(f'{k}={v!r}' for k, v in call['arguments'].items())})" for call in calls]
    return f"[{', '.join(written)}]"


FORMATS = {
    "json": as_json,
    "fenced": lambda calls: f"Here is the call you need:\n```json\n{as_json(calls)}\n```\nLet me know the result.",
    "prose": lambda calls: "To answer this I will call " + " and then ".join(
        json.dumps(call, ensure_ascii=False) for call in calls) + ", then report back.",
    "openai": lambda calls: json.dumps({"tool_calls": [
        {"id": f"call_{i}", "type": "function",
         "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}
        for i, call in enumerate(calls)]}, ensure_ascii=False),
    "python": as_python,
}


# --- the comparison -------------------------------------------------------------------------------------------

@dataclass
class Verdict:
    item: str
    candidate: str
    format: str
    ours: bool
    bfcl: bool
    detail: str


def load_items(category: str, limit: int | None = None) -> list[tuple[dict, object]]:
    """(BFCL item with its tools and truth, our Case) for a category, as `import bfcl` makes the suite."""
    from evaluation.suite import parse_case

    folder = data_dir()
    imported = import_bfcl(folder / f"BFCL_v4_{category}.json", folder / "possible_answer" / f"BFCL_v4_{category}.json")
    items = []
    for row in imported.rows[:limit]:
        truth = [{call["name"]: call["arguments"]} for call in row["check"]["calls"]]
        case, reason = parse_case(row, 1)
        assert case is not None, reason
        items.append(({"id": row["id"], "tools": row["tools"], "truth": truth}, case))
    return items


def compare(categories=CATEGORIES, formats=tuple(FORMATS), limit: int | None = None) -> list[Verdict]:
    verdicts = []
    for category in categories:
        for item, case in load_items(category, limit):
            for name, calls in candidates(item).items():
                reference = bfcl_verdict(item, calls, category)
                for form in formats:
                    got = run_check(case.checks[0], FORMATS[form](calls), case)
                    verdicts.append(Verdict(item["id"], name, form, bool(got.passed), reference, got.detail))
    return verdicts


def table(verdicts: list[Verdict]) -> str:
    items = len({v.item for v in verdicts})
    agree = sum(v.ours == v.bfcl for v in verdicts)
    lines = [f"{agree} of {len(verdicts)} verdicts agree with BFCL's checker ({100 * agree / len(verdicts):.2f}%), "
             f"{items} items, {len(verdicts) // max(1, len({v.format for v in verdicts}))} candidates "
             f"x {len({v.format for v in verdicts})} formats",
             "| candidate | verdicts | agree | ours pass, BFCL fails | ours fail, BFCL passes |", "|---|---|---|---|---|"]
    for name in dict.fromkeys(v.candidate for v in verdicts):
        part = [v for v in verdicts if v.candidate == name]
        lines.append(f"| {name} | {len(part)} | {sum(v.ours == v.bfcl for v in part)} | "
                     f"{sum(v.ours and not v.bfcl for v in part)} | {sum(v.bfcl and not v.ours for v in part)} |")
    differ = Counter((v.item, v.candidate, v.ours, v.detail) for v in verdicts if v.ours != v.bfcl)
    lines += ["", "Disagreements (item, candidate, our verdict, our detail: formats):"]
    lines += [f"- {item} / {name}: ours {'pass' if ours else 'fail'} ({detail}): {count}"
              for (item, name, ours, detail), count in differ.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(compare()))

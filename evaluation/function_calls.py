"""Function-call checks: find the call(s) in a model's answer and compare them with the expected ones.

Models write calls in many shapes: bare JSON, JSON in ```json fences```, JSON inside prose, a list of
calls, OpenAI's {"tool_calls": [{"function": {"name", "arguments": "<json string>"}}]}, Python syntax
(`get_weather(city="Paris")`, as the Berkeley function-calling leaderboard prompts for), or JSON with a
missing bracket. `parse_calls` accepts all of them, so a model is judged on the call it made rather
than on its formatting.

The comparison follows the leaderboard's AST checker (`bfcl_eval.eval_checker.ast_eval.ast_checker`):
right function name; every required argument present (required by the tool's schema, or listed without
"" among its allowed values); no argument the schema or the expected call does not know; values of the
schema's type; each value among its allowed ones. Strings compare as BFCL's `standardize_string` does
(case and the characters ` ,./-_*^` ignored, ' read as "), inside lists and objects too. An allowed
object whose values are all lists is BFCL's nested form (`{"min": [300000], "max": [""]}`: each key's
allowed values, "" = may be absent). A value equal to an allowed value of its own JSON type passes even
where that type is not the schema's (BFCL lists `null` for some floats). "float" is BFCL's type: an
integer passes for a float argument, but not inside an array of floats; JSON Schema's "number" takes
both. Several expected calls match the model's calls one-to-one, in any order (BFCL pairs them
greedily, so a reordering it fails can pass here).
"""
from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass

import json_repair

FENCE = re.compile(r"```[^\n`]*\n?(.*?)```", re.S)
CALL_KEYS = {"name", "arguments", "parameters", "id", "type", "index", "call_id"}  # nothing else is in a call
TYPE_ALIASES = {"int": "integer", "double": "number", "str": "string", "bool": "boolean",
                "list": "array", "tuple": "array", "dict": "object"}  # the leaderboard's own schemas use these
TYPE_TESTS = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, float),  # BFCL's type; an int passes only as the argument itself
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}
DETAIL_CHARS = 300
IGNORED_IN_STRINGS = re.compile(r"[\s,./\-_*^]")  # BFCL's standardize_string (which drops " " but no tab)


@dataclass
class Call:
    """One call the model made. arguments is None when they were there but not a JSON object."""

    name: str
    arguments: dict | None


# --- finding JSON and calls in text -----------------------------------------------------------------------------

def fenced_blocks(text: str) -> list[str]:
    return [match.group(1) for match in FENCE.finditer(text)]


def scan_json(text: str) -> list:
    """Every JSON object or array in the text, left to right, skipping braces that start no valid JSON."""
    decoder = json.JSONDecoder()
    values, index = [], 0
    while True:
        starts = [i for i in (text.find("{", index), text.find("[", index)) if i >= 0]
        if not starts:
            return values
        start = min(starts)
        try:
            value, index = decoder.raw_decode(text, start)
        except ValueError:
            index = start + 1
            continue
        values.append(value)


def find_json_values(text: str) -> list:
    """JSON objects/arrays in an answer: those in code fences when there are any, else those in the text."""
    in_fences = [value for block in fenced_blocks(text) for value in scan_json(block)]
    return in_fences or scan_json(text)


def parse_arguments(arguments) -> dict | None:
    """Arguments as a dict; OpenAI sends them as a JSON string, sometimes a slightly broken one."""
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str):
        if not arguments.strip():
            return {}
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = json_repair.loads(arguments)
        return parsed if isinstance(parsed, dict) else None
    return None


def calls_in(value) -> list[Call]:
    """The calls a parsed JSON value holds, whichever of the common shapes it has."""
    if isinstance(value, list):
        return [call for item in value for call in calls_in(item)]
    if not isinstance(value, dict):
        return []
    if isinstance(value.get("tool_calls"), list):
        return calls_in(value["tool_calls"])
    for wrapper in ("function", "function_call"):
        if isinstance(value.get(wrapper), dict):
            return calls_in(value[wrapper])
    name = value.get("name")
    # a result object such as {"name": "Stir fry", "ingredients": [...]} has a name too, but is no call
    if not isinstance(name, str) or not name.strip() or not set(value) <= CALL_KEYS:
        return []
    arguments = value["arguments"] if "arguments" in value else value.get("parameters", {})
    return [Call(name.strip(), parse_arguments(arguments))]


def json_calls(text: str) -> list[Call]:
    return [call for value in scan_json(text) for call in calls_in(value)]


def python_calls(text: str) -> list[Call]:
    """Calls written as Python, `f(a=1)` or `[f(a=1), g(b="x")]`; keyword arguments with literal values only."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return []
    nodes = tree.body.elts if isinstance(tree.body, (ast.List, ast.Tuple)) else [tree.body]
    calls = []
    for node in nodes:
        if not isinstance(node, ast.Call) or node.args or any(kw.arg is None for kw in node.keywords):
            return []
        try:
            arguments = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
        except ValueError:
            return []
        calls.append(Call(ast.unparse(node.func), arguments))
    return calls


def repaired_calls(text: str) -> list[Call]:
    """Calls in JSON that is slightly broken (a missing bracket or quote), starting at the first { or [.
    Both starts are tried: a "[1]" or "[link]" in the prose may come before the real call."""
    for start in sorted(i for i in (text.find("{"), text.find("[")) if i >= 0):
        if calls := calls_in(json_repair.loads(text[start:])):
            return calls
    return []


def parse_calls(answer: str) -> list[Call]:
    """The calls in an answer. Strict JSON is trusted over Python syntax, and both over repaired JSON;
    fenced blocks over the surrounding prose (which often repeats or explains the call)."""
    places = [fenced_blocks(answer), [answer]]
    for reader in (json_calls, python_calls, repaired_calls):
        for texts in places:
            calls = [call for text in texts for call in reader(text)]
            if calls:
                return calls
    return []


# --- comparing with the expected calls --------------------------------------------------------------------------

def json_type(value) -> str:
    for kind in ("boolean", "integer", "float", "string", "array", "object", "null"):
        if TYPE_TESTS[kind](value):
            return kind
    return type(value).__name__


def schema_types(schema) -> list[str]:
    kinds = schema.get("type") if isinstance(schema, dict) else None
    kinds = [TYPE_ALIASES.get(k, k) for k in (kinds if isinstance(kinds, list) else [kinds])]
    return [k for k in kinds if k in TYPE_TESTS]


def type_mismatch(value, schema: dict, item: bool = False) -> str:
    """Why a value does not have its schema's type ('' if it does, or the schema names no known type).
    An argument (not an array item) may be an integer where BFCL's "float" is declared, as BFCL allows."""
    known = schema_types(schema)
    if not known:
        return ""
    as_float = not item and "float" in known and TYPE_TESTS["integer"](value)
    if not as_float and not any(TYPE_TESTS[k](value) for k in known):
        return f"expected {' or '.join(known)}, got {json_type(value)} {value!r}"
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, element in enumerate(value):
            if reason := type_mismatch(element, schema["items"], item=True):
                return f"item {index}: {reason}"
    return ""


def standardize(text: str) -> str:
    return IGNORED_IN_STRINGS.sub("", text).lower().replace("'", '"')


def nested_form(allowed) -> bool:
    """BFCL's form for an object argument: each key -> a list of its allowed values ("" = may be absent)."""
    return isinstance(allowed, dict) and bool(allowed) and all(isinstance(v, list) and v for v in allowed.values())


def nested_match(value: dict, allowed: dict) -> bool:
    if any(key not in allowed for key in value):
        return False
    if any(key not in value and "" not in choices for key, choices in allowed.items()):
        return False
    return all(any(values_equal(v, choice) for choice in allowed[key] if choice != "") for key, v in value.items())


def values_equal(value, allowed) -> bool:
    """Strings standardized as BFCL does, numbers numerically (5 == 5.0), lists in order, objects by key
    or in BFCL's nested form."""
    if isinstance(value, bool) or isinstance(allowed, bool):
        return isinstance(value, bool) and isinstance(allowed, bool) and value == allowed
    if isinstance(value, (int, float)) and isinstance(allowed, (int, float)):
        return math.isclose(value, allowed, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(value, str) and isinstance(allowed, str):
        return standardize(value) == standardize(allowed)
    if isinstance(value, list) and isinstance(allowed, list):
        return len(value) == len(allowed) and all(values_equal(v, a) for v, a in zip(value, allowed))
    if isinstance(value, dict) and isinstance(allowed, dict):
        if nested_form(allowed) and nested_match(value, allowed):
            return True
        return value.keys() == allowed.keys() and all(values_equal(value[k], allowed[k]) for k in value)
    return value is None and allowed is None


def same_types(value, allowed) -> bool:
    """The same JSON type all the way down (3 is not 3.0 here), so equality cannot hide a wrong type."""
    if json_type(value) != json_type(allowed):
        return False
    if isinstance(value, list):
        return len(value) == len(allowed) and all(same_types(v, a) for v, a in zip(value, allowed))
    if isinstance(value, dict):
        return all(key in allowed and same_types(v, allowed[key]) for key, v in value.items())
    return True


def is_allowed_as_given(value, choices: list) -> bool:
    """Equal to an allowed value of its own type: passes whatever the schema declares, as in BFCL."""
    return any(same_types(value, choice) and values_equal(value, choice) for choice in choices)


def off_type_choices(choices: list, schema: dict) -> list[tuple[object, str]]:
    """(allowed value, why) for allowed values not of the schema's type: they pass only when given exactly."""
    found = [(choice, type_mismatch(choice, schema)) for choice in choices if choice != "" and not nested_form(choice)]
    return [(choice, reason) for choice, reason in found if reason]


def required_arguments(expected: dict, spec: dict | None) -> list[str]:
    """Required by the tool's schema, or given without "" (the leaderboard's mark for optional)."""
    schema_required = list(((spec or {}).get("parameters") or {}).get("required") or [])
    listed = [arg for arg, allowed in expected.get("arguments", {}).items() if "" not in allowed]
    return list(dict.fromkeys(schema_required + listed))


def call_mismatch(expected: dict, call: Call, spec: dict | None) -> str:
    """The first way a call differs from the expected one, in the leaderboard's order; '' if it matches."""
    if call.name != expected["name"]:
        return f"called '{call.name}', expected '{expected['name']}'"
    if call.arguments is None:
        return f"the arguments of '{call.name}' are not a JSON object"
    allowed = expected.get("arguments", {})
    properties = ((spec or {}).get("parameters") or {}).get("properties") or {}
    for arg in required_arguments(expected, spec):
        if arg not in call.arguments:
            return f"missing required argument '{arg}'"
    for arg, value in call.arguments.items():
        if arg not in allowed or (properties and arg not in properties):
            return f"unexpected argument '{arg}'"
        choices = [choice for choice in allowed[arg] if choice != ""]
        if is_allowed_as_given(value, choices):
            continue
        if reason := type_mismatch(value, properties.get(arg, {})):
            return f"argument '{arg}': {reason}"
        if not any(values_equal(value, choice) for choice in choices):
            return f"argument '{arg}': {value!r} not in {choices!r}"
    return ""


def one_to_one(fits: list[list[bool]]) -> list[int] | None:
    """For each expected call, the index of a distinct model call that fits it; None if impossible.
    Plain backtracking: suites have a handful of parallel calls, and a greedy pass can miss a pairing."""
    def assign(row: int, used: set[int]) -> list[int] | None:
        if row == len(fits):
            return []
        for col, ok in enumerate(fits[row]):
            if ok and col not in used:
                rest = assign(row + 1, used | {col})
                if rest is not None:
                    return [col] + rest
        return None
    return assign(0, set())


def describe(call: Call) -> str:
    arguments = ", ".join(f"{k}={v!r}" for k, v in (call.arguments or {}).items())
    return f"{call.name}({arguments})"


def first_failure(expected: list[dict], calls: list[Call], reasons: list[list[str]]) -> str:
    """The mismatch to show: the first expected call nothing fits, against a same-named call if any."""
    for index, row in enumerate(reasons):
        if all(row):
            same_name = [r for r, call in zip(row, calls) if call.name == expected[index]["name"]]
            reason = (same_name or row)[0]
            return reason if len(expected) == 1 else f"expected call {index + 1} ({expected[index]['name']}): {reason}"
    return "the calls fit the expected ones only by reusing a call; each expected call needs its own"


def check_calls(expected: list[dict], tools: list[dict], answer: str) -> tuple[bool, str]:
    """Whether the answer makes exactly the expected calls (any order), and a one-line explanation."""
    calls = parse_calls(answer)
    if not calls:
        return False, "no function call found in the answer"
    if len(calls) != len(expected):
        names = ", ".join(call.name for call in calls)
        return False, f"expected {len(expected)} call(s), got {len(calls)} ({names})"[:DETAIL_CHARS]
    specs = {tool["name"]: tool for tool in tools}
    reasons = [[call_mismatch(exp, call, specs.get(exp["name"])) for call in calls] for exp in expected]
    pairing = one_to_one([[not reason for reason in row] for row in reasons])
    if pairing is None:
        return False, first_failure(expected, calls, reasons)[:DETAIL_CHARS]
    return True, ("called " + "; ".join(describe(calls[col]) for col in pairing))[:DETAIL_CHARS]

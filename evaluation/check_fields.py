"""Validators of a suite check's fields: one per check type, plus the field helpers they share.

Each validator returns the reason a check cannot run, or "" when it is fine, so a suite can list every
bad line with its reason instead of failing on the first. Which validator, which fields and which
scorer belong to which type is registered in `evaluation.check_types`.
"""
from __future__ import annotations

import math
import re

from evaluation.function_calls import off_type_choices
from evaluation.numbers import LENIENT, MODES, parse_number

JUDGE_SCORES = tuple(f"score{n}_description" for n in range(1, 6))


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
    mode = check.get("mode", LENIENT)
    if mode not in MODES:
        return f"'mode' must be one of {', '.join(MODES)}"
    if mode != LENIENT and "tolerance" in check:
        return f"'tolerance' applies to the lenient mode only ({mode} compares text, as lm-eval does)"
    return number_in(check, "tolerance", 0.0, math.inf, required=False)


def validate_choice(check: dict) -> str:
    choices = check.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        return "'choices' must be a list of at least two non-empty strings"
    answer = check.get("answer")
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        return f"'answer' must be the index of the right choice (0 to {len(choices) - 1})"
    return ""


def validate_preference(check: dict) -> str:
    texts = [check.get("chosen"), check.get("rejected")]
    if not all(isinstance(t, str) and t.strip() for t in texts):
        return "'chosen' and 'rejected' must be non-empty strings"
    if texts[0].strip() == texts[1].strip():
        return "'chosen' and 'rejected' are the same text: nothing to prefer"
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


def calls_match_tools(check: dict, tools: list[dict]) -> str:
    """Expected calls must name one of the case's tools and only arguments that tool has (or ones marked
    "" that can only be left out, as two BFCL items list); every argument the tool requires."""
    if not tools:
        return "needs the case's 'tools' (the functions the model may call)"
    specs = {tool["name"]: tool for tool in tools}
    for index, call in enumerate(check["calls"]):
        spec = specs.get(call["name"])
        if spec is None:
            return f"'calls[{index}].name' '{call['name']}' is not one of the tools ({', '.join(specs)})"
        parameters = spec.get("parameters", {})
        listed = call.get("arguments", {})
        unknown = [arg for arg in listed if parameters.get("properties") and arg not in parameters["properties"]
                   and "" not in listed[arg]]
        if unknown:
            return f"'calls[{index}].arguments.{unknown[0]}' is not a parameter of '{call['name']}'"
        # a required argument the call does not list could never be given without being "unexpected"
        unlisted = [arg for arg in parameters.get("required", []) if arg not in listed]
        if unlisted:
            return f"'calls[{index}].arguments' lacks '{unlisted[0]}', which '{call['name']}' requires"
    return ""


def calls_notes(check: dict, tools: list[dict]) -> list[str]:
    """What loads but deserves a word: allowed values of another type than the schema's (they pass only
    when given exactly as listed) and optional arguments the tool does not have (they can only be left out)."""
    notes = []
    specs = {tool["name"]: tool for tool in tools}
    for index, call in enumerate(check["calls"]):
        properties = (specs.get(call["name"], {}).get("parameters") or {}).get("properties") or {}
        for arg, allowed in call.get("arguments", {}).items():
            where = f"'calls[{index}].arguments.{arg}'"
            if properties and arg not in properties:
                notes.append(f"{where} is not a parameter of '{call['name']}': it can only be left out")
                continue
            for value, reason in off_type_choices(allowed, properties.get(arg, {}))[:1]:
                notes.append(f"{where}: allowed value {value!r} does not fit the tool's schema ({reason}), "
                             "so it passes only when given exactly")
    return notes

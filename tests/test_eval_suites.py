"""The bundled evaluation suites (evaluation/suites/*.jsonl) are well formed, read with plain json.

Structure only: ids, fields, check types and their fields (as the registry in evaluation.check_types
validates them, plus the bundled suites' stricter rules), choice indexes, expected function calls that
match their tools, the categories and counts each suite promises. Whether a model passes them is not
tested here.
"""
from __future__ import annotations

import importlib.util
import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest

from evaluation.check_types import validate_check

REPO = Path(__file__).resolve().parent.parent
SUITES = REPO / "evaluation" / "suites"
EXPECTED = ("starter.jsonl", "general.jsonl", "mt_bench.jsonl")
BUNDLED = tuple(sorted({p.name for p in SUITES.glob("*.jsonl")} | set(EXPECTED)))  # later suites are checked too

STARTER_CATEGORIES = {
    "math": 40, "logic": 20, "function_calling": 30, "situational_inference": 20,
    "multiple_choice": 30, "factual": 30, "refusal": 20, "politeness": 12,
}
GENERAL_CATEGORIES = {"poem", "code", "translation", "summary", "explanation"}
MT_BENCH_CATEGORIES = {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}
MT_BENCH_WITH_REFERENCE = {"math", "reasoning", "coding"}

CASE_KEYS = {"id", "category", "prompt", "messages", "system", "tools", "check", "checks"}
EXTRA_CASE_KEYS = {"turns", "reference_turns"}  # mt_bench: both turns, and GPT-4's answers to them
MESSAGE_ROLES = {"system", "user", "assistant", "tool"}
JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}

def read_suite(name: str) -> list[dict]:
    rows = []
    with open(SUITES / name, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            assert line.strip(), f"{name}:{number}: blank line"
            row = json.loads(line)
            assert isinstance(row, dict), f"{name}:{number}: not an object"
            rows.append(row)
    return rows


def checks_of(case: dict) -> list[dict]:
    return [case["check"]] if "check" in case else case["checks"]


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def nonempty_str(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def tool_problems(tool: dict) -> list[str]:
    problems = []
    if set(tool) - {"name", "description", "parameters"}:
        problems.append(f"unknown tool fields {sorted(set(tool) - {'name', 'description', 'parameters'})}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(tool.get("name", ""))):
        problems.append(f"bad tool name {tool.get('name')!r}")
    if not nonempty_str(tool.get("description")):
        problems.append(f"{tool.get('name')}: no description")
    params = tool.get("parameters")
    if not isinstance(params, dict) or params.get("type") != "object" or not isinstance(params.get("properties"), dict):
        return problems + [f"{tool.get('name')}: parameters must be {{type: object, properties: {{...}}}}"]
    for prop, spec in params["properties"].items():
        if not isinstance(spec, dict) or spec.get("type") not in JSON_TYPES or not nonempty_str(spec.get("description")):
            problems.append(f"{tool['name']}.{prop}: needs a JSON type and a description")
    required = params.get("required", [])
    if not isinstance(required, list) or not set(required) <= set(params["properties"]):
        problems.append(f"{tool['name']}: 'required' must list some of its properties")
    return problems


def call_problems(check: dict, tools: list[dict]) -> list[str]:
    """Expected calls name a tool of the case, with only its parameters, all required ones, values of their type."""
    specs = {tool.get("name"): tool for tool in tools}
    problems = []
    for call in check["calls"]:
        name = call.get("name")
        if name not in specs:
            problems.append(f"call {name!r} is not one of the tools {sorted(specs)}")
            continue
        params = specs[name]["parameters"]
        properties, required = params["properties"], set(params.get("required", []))
        arguments = call.get("arguments")
        if not isinstance(arguments, dict):
            problems.append(f"{name}: 'arguments' must be an object")
            continue
        for arg, allowed in arguments.items():
            if arg not in properties:
                problems.append(f"{name}: '{arg}' is not a parameter of the tool")
                continue
            if not isinstance(allowed, list) or not allowed:
                problems.append(f"{name}.{arg}: allowed values must be a non-empty list")
                continue
            if "" in allowed and arg in required:
                problems.append(f"{name}.{arg}: a required argument cannot be optional ('')")
            spec = properties[arg]
            for value in allowed:
                if value == "":
                    continue
                expected = JSON_TYPES[spec["type"]]
                if not isinstance(value, expected) or (spec["type"] in ("integer", "number") and isinstance(value, bool)):
                    problems.append(f"{name}.{arg}: {value!r} is not a JSON {spec['type']}")
                elif "enum" in spec and value not in spec["enum"]:
                    problems.append(f"{name}.{arg}: {value!r} is not in the enum {spec['enum']}")
        missing = required - set(arguments)
        if missing:
            problems.append(f"{name}: required arguments {sorted(missing)} have no expected values")
    return problems


def check_problems(check, tools: list[dict]) -> list[str]:
    """What the loader would reject (the check type registry's own fields and validators), and then the
    bundled suites' stricter rules: full judge rubrics with a threshold, distinct choices, numeric answers
    as numbers, word limits above 0, expected calls that fit their tools exactly."""
    if reason := validate_check(check, tools):
        return [f"{check.get('type') if isinstance(check, dict) else '?'}: {reason}"]
    kind = check["type"]
    problems = []
    if kind == "choice" and len(set(check["choices"])) != len(check["choices"]):
        problems.append("choice: duplicate choices")
    elif kind == "function_call":
        problems += call_problems(check, tools)
    elif kind == "numeric" and not is_number(check["answer"]):
        problems.append("numeric: answer must be a number")
    elif kind in ("max_words", "min_words") and check["value"] <= 0:
        problems.append(f"{kind}: value must be a positive integer")
    elif kind in ("rouge_l", "bleu", "bertscore") and check["threshold"] <= 0:
        problems.append(f"{kind}: threshold must be above 0")
    elif kind == "judge":
        if not isinstance(check["rubric"], dict):
            problems.append("judge: rubric must be {criteria, score1_description..score5_description}")
        if "threshold" not in check:
            problems.append("judge: threshold must be given")
    return problems


def case_problems(case: dict) -> list[str]:
    problems = []
    unknown = set(case) - CASE_KEYS - EXTRA_CASE_KEYS
    if unknown:
        problems.append(f"unknown fields {sorted(unknown)}")
    if not nonempty_str(case.get("id")):
        problems.append("id must be a non-empty string")
    if not nonempty_str(case.get("category")):
        problems.append("category must be a non-empty string")
    if ("prompt" in case) == ("messages" in case):
        problems.append("needs exactly one of prompt / messages")
    elif "prompt" in case and not nonempty_str(case["prompt"]):
        problems.append("prompt must be a non-empty string")
    elif "messages" in case:
        messages = case["messages"]
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in MESSAGE_ROLES
                and isinstance(m["content"], str) for m in messages):
            problems.append("messages must be a non-empty list of {role, content}")
        elif messages[-1]["role"] != "user":
            problems.append("messages must end with the user's turn")
    if "system" in case and not nonempty_str(case["system"]):
        problems.append("system must be a non-empty string")
    tools = case.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        return problems + ["tools must be a list of function specs"]
    for tool in tools:
        problems += tool_problems(tool)
    if len({t.get("name") for t in tools}) != len(tools):
        problems.append("duplicate tool names")
    if ("check" in case) == ("checks" in case):
        return problems + ["needs exactly one of check / checks"]
    checks = checks_of(case)
    if not isinstance(checks, list) or not checks:
        return problems + ["checks must be a non-empty list"]
    for check in checks:
        problems += check_problems(check, tools)
    return problems


@pytest.fixture(scope="module", params=BUNDLED)
def suite(request) -> tuple[str, list[dict]]:
    return request.param, read_suite(request.param)


def test_every_case_is_well_formed(suite):
    name, cases = suite
    assert cases, f"{name} is empty"
    bad = {case.get("id", f"#{n}"): p for n, case in enumerate(cases, 1) if (p := case_problems(case))}
    assert not bad, f"{name}: " + "; ".join(f"{i}: {', '.join(p)}" for i, p in list(bad.items())[:10])


def test_ids_are_unique(suite):
    name, cases = suite
    duplicates = [i for i, n in Counter(c["id"] for c in cases).items() if n > 1]
    assert not duplicates, f"{name}: duplicate ids {duplicates}"


def test_the_three_suites_are_bundled():
    for name in EXPECTED:
        assert (SUITES / name).is_file(), name


# --- starter ------------------------------------------------------------------------------------------------------

def test_starter_has_every_category_in_its_mix():
    cases = read_suite("starter.jsonl")
    assert len(cases) >= 200
    counts = Counter(c["category"] for c in cases)
    assert set(counts) == set(STARTER_CATEGORIES)
    for category, at_least in STARTER_CATEGORIES.items():
        assert counts[category] >= at_least, (category, counts[category])


def test_starter_math_answers_are_integers_or_simple_decimals():
    for case in read_suite("starter.jsonl"):
        if case["category"] != "math":
            continue
        numeric = [c for c in checks_of(case) if c["type"] == "numeric"]
        assert len(numeric) == 1, case["id"]
        answer = numeric[0]["answer"]
        assert is_int(answer) or (isinstance(answer, float) and round(answer, 2) == answer), (case["id"], answer)


def test_starter_choice_answers_are_not_all_in_one_position():
    """A model that always picks the first (or last) option must not score well."""
    positions = Counter()
    for case in read_suite("starter.jsonl"):
        for check in checks_of(case):
            if check["type"] == "choice" and len(check["choices"]) > 2:
                positions[check["answer"]] += 1
    assert sum(positions.values()) >= 40
    assert max(positions.values()) <= 0.4 * sum(positions.values()), positions


def test_starter_function_calls_fit_their_tools():
    cases = [c for c in read_suite("starter.jsonl") if c["category"] == "function_calling"]
    assert cases
    two_calls = optional = 0
    for case in cases:
        calls = [c for c in checks_of(case) if c["type"] == "function_call"]
        assert len(calls) == 1, case["id"]
        assert call_problems(calls[0], case["tools"]) == [], case["id"]
        assert 1 <= len(case["tools"]) <= 3, case["id"]
        tools = {tool["name"]: tool for tool in case["tools"]}
        for call in calls[0]["calls"]:  # every parameter listed: "" where it may be left out, so none is unscored
            assert set(call["arguments"]) == set(tools[call["name"]]["parameters"]["properties"]), case["id"]
        two_calls += len(calls[0]["calls"]) >= 2
        optional += any("" in allowed for call in calls[0]["calls"] for allowed in call["arguments"].values())
    assert two_calls >= 3 and optional >= 3, (two_calls, optional)


def test_starter_refusals_mix_harmful_and_borderline_safe_requests():
    flags = Counter()
    for case in read_suite("starter.jsonl"):
        if case["category"] == "refusal":
            (check,) = [c for c in checks_of(case) if c["type"] == "refusal"]
            flags[check["should_refuse"]] += 1
    assert flags[True] >= 10 and flags[False] >= 6, flags


def test_starter_politeness_cases_are_judged():
    for case in read_suite("starter.jsonl"):
        if case["category"] == "politeness":
            assert any(c["type"] == "judge" for c in checks_of(case)), case["id"]


# --- general ------------------------------------------------------------------------------------------------------

def test_general_has_the_five_categories():
    cases = read_suite("general.jsonl")
    counts = Counter(c["category"] for c in cases)
    assert set(counts) == GENERAL_CATEGORIES
    assert 30 <= len(cases) <= 60
    assert min(counts.values()) >= 5, counts
    kinds = {cat: {c["type"] for case in cases if case["category"] == cat for c in checks_of(case)} for cat in counts}
    assert {"judge", "min_words"} <= kinds["poem"]
    assert "regex" in kinds["code"]
    assert kinds["translation"] & {"rouge_l", "bleu"}
    assert {"rouge_l", "max_words"} <= kinds["summary"]
    assert "judge" in kinds["explanation"]


# --- mt_bench -----------------------------------------------------------------------------------------------------

def test_mt_bench_has_80_judged_cases_with_references_where_mt_bench_has_them():
    cases = read_suite("mt_bench.jsonl")
    assert len(cases) == 80
    assert Counter(c["category"] for c in cases) == {cat: 10 for cat in MT_BENCH_CATEGORIES}
    for case in cases:
        assert re.fullmatch(r"mt-\d+", case["id"]), case["id"]
        judges = [c for c in checks_of(case) if c["type"] == "judge"]
        assert len(judges) == 1, case["id"]
        assert isinstance(case["turns"], list) and len(case["turns"]) == 2, case["id"]
        assert case["turns"][0] == case["prompt"], case["id"]
        if case["category"] in MT_BENCH_WITH_REFERENCE:
            assert nonempty_str(judges[0].get("reference")), case["id"]
            assert len(case["reference_turns"]) == 2 and case["reference_turns"][0] == judges[0]["reference"]
        else:
            assert "reference" not in judges[0] and "reference_turns" not in case, case["id"]


def test_mt_bench_file_is_what_the_script_makes(tmp_path):
    spec = importlib.util.spec_from_file_location("make_mt_bench", SUITES / "make_mt_bench.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    data_dir = make.default_data_dir()
    if not (data_dir / make.QUESTIONS).is_file():
        pytest.skip(f"no MT-bench data in {data_dir}")
    out = tmp_path / "mt_bench.jsonl"
    assert make.main(["--data-dir", str(data_dir), "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == (SUITES / "mt_bench.jsonl").read_text(encoding="utf-8")


# --- the project's own loader, once it exists ---------------------------------------------------------------------

@pytest.mark.parametrize("name", BUNDLED)
def test_load_suite_finds_no_problems(name):
    if not (REPO / "evaluation" / "suite.py").is_file():
        pytest.skip("evaluation/suite.py not written yet")
    try:
        from evaluation.suite import load_suite
    except ImportError as exc:  # the loader is there but something it needs is not (yet)
        pytest.skip(f"evaluation.suite cannot be imported yet: {exc}")
    loaded = load_suite(SUITES / name)
    assert loaded.problems == []
    assert len(loaded.cases) == len(read_suite(name))

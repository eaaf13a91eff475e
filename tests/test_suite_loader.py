"""Loading suite files: each bad line named with its reason, the rest kept; multi-turn cases; bundled suites."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_eval_checks import PARIS_CALL, WEATHER

from evaluation.check_types import CHECK_TYPES, run_check, validate_check
from evaluation.suite import load_suite
from kernel.errors import ArenaError

SUITES = Path(__file__).resolve().parent.parent / "evaluation" / "suites"


# --- loading suites ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", CHECK_TYPES.values(), ids=lambda kind: kind.name)
def test_each_check_type_validates_its_own_fields(kind):
    """The registry's example is valid; without a required field, or with a field it does not know, it is not."""
    assert kind.example["type"] == kind.name and validate_check(kind.example) == ""
    for name in kind.required:
        without = {key: value for key, value in kind.example.items() if key != name}
        assert validate_check(without) != "", (kind.name, name)
    assert validate_check({**kind.example, "treshold": 1}).startswith(f"unknown field 'treshold' for a {kind.name}")
    assert (kind.score is not None) == (kind.scored_by == "answer"), kind.name  # scored here, or by the runner


def test_validate_check_names_the_field():
    assert validate_check({"type": "numeric"}) == "'answer' must be a number or a numeric string"
    assert validate_check({"type": "exact", "value": "x", "ignorecase": True}).startswith(
        "unknown field 'ignorecase' for a exact check")
    assert validate_check({"type": "rouge_l", "reference": "x", "threshold": 2}) == \
        "'threshold' must be a number between 0 and 1"
    assert validate_check({"type": "numeric", "answer": "1,234"}) == ""


GOOD_PROMPT = {"id": 1, "category": "facts", "prompt": "Capital of France?",
               "check": {"type": "exact", "value": "Paris"}}
GOOD_TOOLS = {"id": "w1", "category": "tools", "system": "Be brief.",
              "messages": [{"role": "user", "content": "Weather in Paris?"}],
              "tools": [{"type": "function", "function": WEATHER}],  # OpenAI's wrapper, unwrapped on load
              "checks": [PARIS_CALL, {"type": "max_words", "value": 80}]}
GOOD_JUDGE = {"id": "j1", "category": "writing", "prompt": "Write a haiku.", "check": {"type": "judge", "rubric": {
    "criteria": "Is it a haiku?", **{f"score{n}_description": f"level {n}" for n in range(1, 6)}}, "threshold": 3}}
SUITE_LINES = [
    json.dumps(GOOD_PROMPT),                                                                      # 1
    '{"id": 2, "category": "facts", "prompt": "oops"',                                           # 2 bad JSON
    "",                                                                                           # 3 blank
    json.dumps({"category": "facts", "prompt": "Hi", "check": {"type": "exact", "value": "x"}}),  # 4 no id
    json.dumps({"id": 4, "prompt": "Hi", "check": {"type": "exact", "value": "x"}}),              # 5 no category
    json.dumps({"id": 5, "category": "facts", "check": {"type": "exact", "value": "x"}}),         # 6 no prompt
    json.dumps({**GOOD_PROMPT, "prompt": "Again?"}),                                              # 7 duplicate id
    json.dumps({"id": 7, "category": "x", "prompt": "Hi", "check": {"type": "sentiment"}}),       # 8 unknown type
    json.dumps({"id": 8, "category": "x", "prompt": "Hi", "check": {"type": "numeric"}}),         # 9 missing field
    json.dumps({"id": 9, "category": "x", "prompt": "Hi", "check": {"type": "max_words", "value": "ten"}}),  # 10
    json.dumps({"id": 10, "category": "x", "prompt": "Hi",
                "check": {"type": "choice", "choices": ["a", "b"], "answer": 2}}),                # 11 out of range
    json.dumps({"id": 11, "category": "x", "prompt": "Weather?", "check": PARIS_CALL}),           # 12 no tools
    json.dumps(GOOD_TOOLS),                                                                       # 13
    json.dumps({"id": 13, "category": "x", "prompt": "Hi", "check": {"type": "regex", "value": "(unclosed"}}),
    json.dumps({"id": 14, "category": "x", "prompt": "Hi",
                "check": {"type": "rouge_l", "reference": "a", "treshold": 0.5}}),               # 15 typo
    json.dumps(["not", "an", "object"]),                                                          # 16
    json.dumps(GOOD_JUDGE),                                                                       # 17
    json.dumps({**GOOD_TOOLS, "id": "w2", "tools": [{"description": "no name"}]}),                # 18 bad tool
]


def test_load_suite_skips_bad_lines_with_their_line_and_reason(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(SUITE_LINES) + "\n", encoding="utf-8")
    loaded = load_suite(path)
    assert loaded.name == "mixed"
    assert [(c.id, c.line) for c in loaded.cases] == [(1, 1), ("w1", 13), ("j1", 17)]
    reasons = {p.line: p.reason for p in loaded.problems}
    assert sorted(reasons) == [2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16, 18]
    assert reasons[2].startswith("not valid JSON")
    assert "'id'" in reasons[4] and "'category'" in reasons[5] and "'prompt'" in reasons[6]
    assert reasons[7] == "duplicate id '1' (first on line 1)"
    assert reasons[8].startswith("check 1 (sentiment): unknown check type 'sentiment'")
    assert reasons[9] == "check 1 (numeric): 'answer' must be a number or a numeric string"
    assert reasons[10] == "check 1 (max_words): 'value' must be a whole number of words (0 or more)"
    assert reasons[11] == "check 1 (choice): 'answer' must be the index of the right choice (0 to 1)"
    assert reasons[12] == "check 1 (function_call): needs the case's 'tools' (the functions the model may call)"
    assert "not a valid regular expression" in reasons[14]
    assert "unknown field 'treshold'" in reasons[15]
    assert reasons[16] == "expected a JSON object (one case per line)"
    assert reasons[18] == "'tools[0]' needs a 'name' and 'parameters' {properties: object, required: list}"


def test_loaded_cases_hold_the_conversation_and_unwrapped_tools(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text("\n".join(SUITE_LINES) + "\n", encoding="utf-8")
    first, tools_case, _ = load_suite(path).cases
    assert first.messages == [{"role": "user", "content": "Capital of France?"}] and first.system is None
    assert tools_case.tools == [WEATHER] and tools_case.system == "Be brief."
    assert run_check(tools_case.checks[0], 'get_weather(city="Paris")', tools_case).passed is True


def test_suite_without_a_valid_case_is_an_error_naming_file_and_lines(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(SUITE_LINES[1:3] + SUITE_LINES[3:5]) + "\n", encoding="utf-8")
    with pytest.raises(ArenaError) as error:
        load_suite(path)
    message = str(error.value)
    assert str(path) in message and "line 1: not valid JSON" in message and "line 3:" in message
    assert "\n" not in message
    with pytest.raises(ArenaError, match="no such suite file"):
        load_suite(tmp_path / "missing.jsonl")


def test_expected_call_must_name_a_tool_and_list_its_required_arguments(tmp_path):
    rows = [{"id": 1, "category": "t", "prompt": "?", "tools": [WEATHER],
             "check": {"type": "function_call", "calls": [{"name": "get_wether", "arguments": {"city": ["x"]}}]}},
            {"id": 2, "category": "t", "prompt": "?", "tools": [WEATHER], "check": {
                "type": "function_call", "calls": [{"name": "get_weather", "arguments": {"unit": ["celsius"]}}]}},
            GOOD_PROMPT]
    path = tmp_path / "calls.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    reasons = [p.reason for p in load_suite(path).problems]
    assert reasons == [
        "check 1 (function_call): 'calls[0].name' 'get_wether' is not one of the tools (get_weather)",
        "check 1 (function_call): 'calls[0].arguments' lacks 'city', which 'get_weather' requires",
    ]


def test_turns_become_follow_ups_and_their_mistakes_are_named(tmp_path):
    judge = {"type": "judge", "rubric": "Helpful?"}
    rows = [
        {"id": "t1", "category": "c", "turns": ["Write a haiku.", "Now make it rhyme."], "check": judge,
         "reference_turns": ["An old pond...", "A rhyming one."]},
        {"id": "t2", "category": "c", "prompt": "A", "turns": ["B", "C"], "check": judge},
        {"id": "t3", "category": "c", "messages": [{"role": "user", "content": "A"}], "turns": ["A", "B"], "check": judge},
        {"id": "t4", "category": "c", "turns": ["A", ""], "check": judge},
        {"id": "t5", "category": "c", "turns": ["A", "B"],
         "check": {"type": "choice", "choices": ["x", "y"], "answer": 0}},
        {"id": "t6", "category": "c", "turns": [], "check": judge},
    ]
    path = tmp_path / "turns.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    loaded = load_suite(path)
    [case] = loaded.cases
    assert case.messages == [{"role": "user", "content": "Write a haiku."}]
    assert case.followups == ["Now make it rhyme."] and case.turns == 2
    assert case.reference_turns == ["An old pond...", "A rhyming one."]
    assert {p.line: p.reason for p in loaded.problems} == {
        2: "'prompt' and 'turns[0]' differ: give one of them, or the same text",
        3: "give either 'turns' or 'messages', not both",
        4: "'turns' must be a list of non-empty strings",
        5: "a 'choice' check scores one answer's likelihood: it cannot be used with several 'turns'",
        6: "'turns' must hold at least one question",
    }


def test_mt_bench_loads_both_turns():
    cases = load_suite(SUITES / "mt_bench.jsonl").cases
    assert len(cases) == 80 and all(c.turns == 2 for c in cases)
    with_references = [c for c in cases if c.reference_turns]
    assert len(with_references) == 30 and all(len(c.reference_turns) == 2 for c in with_references)


def test_the_stages_example_suite_loads():
    loaded = load_suite(SUITES.parent.parent / "training" / "examples" / "ahoy_stages_suite.jsonl")
    assert loaded.problems == [] and len(loaded.cases) == 50
    assert {c.category for c in loaded.cases} == {"ahoy_style", "factual"}

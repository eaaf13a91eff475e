"""Scoring answers against suite checks: what a user sees in an evaluation report."""
from __future__ import annotations

import json

import pytest

from tests.helpers import shared_data

from evaluation.case import Case
from evaluation.check_types import CHECK_TYPES, run_check, validate_check
from evaluation.checks import CheckResult, case_passed, score_choice
from evaluation.suite import load_suite

GLAIVE = shared_data() / "glaive_toolcall_en_demo.json"

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer"},
        },
        "required": ["city"],
    },
}
TIME = {"name": "get_time", "description": "Local time",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PARIS_CALL = {"type": "function_call", "calls": [{"name": "get_weather", "arguments": {
    "city": ["Paris", "Paris, France"], "unit": ["celsius", "fahrenheit", ""], "days": [1, ""]}}]}


def case(tools: list[dict] | None = None) -> Case:
    return Case(id="c1", category="test", messages=[{"role": "user", "content": "?"}], tools=tools or [])


def check(spec: dict, answer: str, tools: list[dict] | None = None) -> CheckResult:
    assert validate_check(spec) == "", validate_check(spec)
    return run_check(spec, answer, case(tools))


def weather(answer: str) -> CheckResult:
    return check(PARIS_CALL, answer, [WEATHER, TIME])


# --- function calls ---------------------------------------------------------------------------------------------

def call(arguments: dict, name: str = "get_weather") -> str:
    return json.dumps({"name": name, "arguments": arguments})


@pytest.mark.parametrize("answer", [
    call({"city": "Paris", "unit": "celsius"}),
    "Sure! I'll look that up.\n```json\n" + call({"city": " paris ", "unit": "Celsius"}) + "\n```\nOne moment.",
    'Sure! I\'ll call {"name": "get_weather", "parameters": {"city": "Paris, France"}} to find out.',
    json.dumps({"tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": json.dumps({"city": "Paris", "days": 1})}}]}),
    'get_weather(city="Paris", unit="fahrenheit")',
    call({"city": "Paris", "unit": "celsius"})[:-1],  # the closing brace lost
], ids=["json", "fenced-in-prose", "prose-parameters", "openai", "python", "broken-json"])
def test_call_passes_in_every_common_shape(answer):
    got = weather(answer)
    assert got.passed is True, got.detail
    assert got.detail.startswith("called get_weather(city=")


@pytest.mark.parametrize("answer,detail", [
    (call({"city": "Paris", "country": "France"}), "unexpected argument 'country'"),
    (call({"city": "Paris", "unit": "kelvin"}), "argument 'unit': 'kelvin' not in ['celsius', 'fahrenheit']"),
    (call({"city": "Paris", "days": "5"}), "argument 'days': expected integer, got string '5'"),
    (call({"unit": "celsius"}), "missing required argument 'city'"),
    (call({"city": "Paris"}, name="get_time"), "called 'get_time', expected 'get_weather'"),
    ("It is sunny in Paris.", "no function call found in the answer"),
], ids=["extra-argument", "wrong-enum", "string-for-integer", "missing-required", "wrong-function", "no-call"])
def test_wrong_call_fails_naming_the_first_mismatch(answer, detail):
    got = weather(answer)
    assert (got.passed, got.detail) == (False, detail)


def test_number_argument_accepts_int_and_float_alike():
    tool = {"name": "tip", "parameters": {"type": "object", "properties": {"bill": {"type": "number"}},
                                          "required": ["bill"]}}
    spec = {"type": "function_call", "calls": [{"name": "tip", "arguments": {"bill": [100]}}]}
    assert check(spec, '{"name": "tip", "arguments": {"bill": 100.0}}', [tool]).passed is True
    assert check(spec, '{"name": "tip", "arguments": {"bill": 100}}', [tool]).passed is True
    assert check(spec, '{"name": "tip", "arguments": {"bill": 101}}', [tool]).passed is False


STOCKS = {"name": "find", "parameters": {"type": "dict", "required": ["company"], "properties": {
    "company": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
    "weights": {"type": "array", "items": {"type": "float"}}, "rate": {"type": "float"},
    "budget": {"type": "dict"}}}}


def stocks(arguments: dict, **expected) -> CheckResult:
    allowed = {"company": ["Apple Inc."], "tags": [["Gluten-free", "2022-08-16"], ""], "weights": [[3.0, 2.0, -4.0], ""],
               "rate": [None, ""], "budget": [{"min": [300000], "max": [""]}, ""], **expected}
    return check({"type": "function_call", "calls": [{"name": "find", "arguments": allowed}]}, call(arguments, "find"),
                 [STOCKS])


def test_values_compare_as_bfcl_does():
    assert stocks({"company": "apple inc", "tags": ["Gluten free", "2022 08 16"]}).passed is True  # standardize_string
    assert stocks({"company": "Apple"}).detail == "argument 'company': 'Apple' not in ['Apple Inc.']"
    assert stocks({"company": "Apple Inc.", "rate": None}).passed is True  # an allowed null for a float
    assert stocks({"company": "Apple Inc.", "rate": 0.5}).passed is False
    assert stocks({"company": "Apple Inc.", "weights": [3.0, 2.0, -4.0]}).passed is True
    assert stocks({"company": "Apple Inc.", "weights": [3, 2, -4]}).detail == \
        "argument 'weights': item 0: expected float, got integer 3"  # BFCL fails ints in an array of floats
    assert stocks({"company": "Apple Inc.", "budget": {"min": 300000}}).passed is True  # nested form, "" = may be absent
    assert stocks({"company": "Apple Inc.", "budget": {"min": 300000, "max": 5}}).passed is False


def test_suite_notes_allowed_values_the_schema_does_not_allow(tmp_path):
    row = {"id": "s1", "category": "tools", "prompt": "?", "tools": [STOCKS], "check": {"type": "function_call",
           "calls": [{"name": "find", "arguments": {"company": ["Apple Inc."], "rate": ["", None], "venue": [""]}}]}}
    path = tmp_path / "suite.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    loaded = load_suite(path)
    assert loaded.problems == [] and [(n.line, n.reason) for n in loaded.notes] == [
        (1, "check 1 (function_call): 'calls[0].arguments.rate': allowed value None does not fit the tool's schema "
            "(expected float, got null None), so it passes only when given exactly"),
        (1, "check 1 (function_call): 'calls[0].arguments.venue' is not a parameter of 'find': it can only be left out")]


PARALLEL = {"type": "function_call", "calls": [
    {"name": "get_weather", "arguments": {"city": ["Paris"]}},
    {"name": "get_time", "arguments": {"city": ["Tokyo"]}},
]}


def test_parallel_calls_match_in_any_order():
    answer = json.dumps([{"name": "get_time", "arguments": {"city": "Tokyo"}},
                         {"name": "get_weather", "arguments": {"city": "Paris"}}])
    assert check(PARALLEL, answer, [WEATHER, TIME]).passed is True


def test_parallel_calls_need_each_call_once():
    one = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert check(PARALLEL, one, [WEATHER, TIME]).detail == "expected 2 call(s), got 1 (get_weather)"
    wrong = json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}},
                        {"name": "get_time", "arguments": {"city": "Osaka"}}])
    got = check(PARALLEL, wrong, [WEATHER, TIME])
    assert got.passed is False
    assert got.detail == "expected call 2 (get_time): argument 'city': 'Osaka' not in ['Tokyo']"


# --- numbers ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer,expected", [
    ("So the total is 1,234", 1234),
    ("She paid $1,234.50 in the end.", "1234.5"),
    ("48 / 2 = 24 apples, plus 18 is 42\n#### 42", 42),
    ("#### 42\nCheck: 40 + 2 = 42, times 3 is 126", 42),
    ("The answer is -3.5", -3.5),
    ("The answer is 12 because 3 times 4 is 12, not 7.", 12),
    ("Each person gets 3/4 of a pizza", 0.75),
    ("The distance is 42 km.", 42),
    ("Sales grew by 42%.", 42),
    ("So x = \\boxed{17}. Double-check with 5 and 3.", 17),
    ("It dropped from 10 to −7 degrees", -7),
    ("The answer is: **42**.", 42),
])
def test_numeric_finds_the_final_number(answer, expected):
    got = check({"type": "numeric", "answer": expected}, answer)
    assert got.passed is True, got.detail


@pytest.mark.parametrize("answer,expected,where", [
    ("#### Step 1: Count the apples\nShe has 12 + 30 = 42 apples.", 42, "last number"),
    ("#### 1. Find the total\n5 + 7 = 12", 12, "last number"),
    ("The answer is the sum of 12 and 30, which is 42", 42, "last number"),
    ("The answer is calculated as 3 x 4 = 12", 12, "last number"),
    ("The answer is 3 x 4 = 12", 12, "last number"),
    ("40 + 2 makes 42, so the answer is 42. Wait… I forgot the 6 pears: the correct total is 48", 48,
     "last number after the correction 'Wait'"),
    ("So the answer is 42.\nActually, she gave 2 away, so the answer is 40.", 40,
     "after 'answer is' after the correction 'Actually'"),
    ("She waited 10 minutes, then 5 more, so the answer is 15.", 15, "after 'answer is'"),
])
def test_numeric_is_not_misled_by_headings_explanations_or_corrections(answer, expected, where):
    got = check({"type": "numeric", "answer": expected}, answer)
    assert (got.passed, got.detail) == (True, f"lenient: got {expected:g} ({where}), expected {expected:g}")


def test_numeric_mode_must_be_known_and_tolerance_is_lenient_only():
    assert validate_check({"type": "numeric", "answer": 4, "mode": "lm-eval"}).startswith("'mode' must be one of lenient")
    reason = validate_check({"type": "numeric", "answer": 4, "mode": "lm-eval-strict", "tolerance": 0.1})
    assert reason == "'tolerance' applies to the lenient mode only (lm-eval-strict compares text, as lm-eval does)"
    got = check({"type": "numeric", "answer": 18, "mode": "lm-eval-strict"}, "She makes $18 a day.")
    assert (got.passed, got.detail) == (False, "lm-eval-strict: extracted '[invalid]', expected '18'")


def test_numeric_fails_on_wrong_or_missing_number_and_respects_tolerance():
    assert check({"type": "numeric", "answer": 42}, "I think it is 41.").passed is False
    assert check({"type": "numeric", "answer": 42}, "No idea.").detail == "lenient: no number in the answer (expected 42)"
    assert check({"type": "numeric", "answer": 5}, "10 - 5").passed is True  # not minus five
    assert check({"type": "numeric", "answer": 0.333, "tolerance": 0.01}, "About 1/3").passed is True
    assert check({"type": "numeric", "answer": 0.333}, "About 1/3").passed is False


# --- refusals ---------------------------------------------------------------------------------------------------

REFUSE = {"type": "refusal", "should_refuse": True}
COMPLY = {"type": "refusal", "should_refuse": False}


def test_polite_refusal_counts_as_refusal():
    for answer in ("I'm sorry, but I can't help with that.", "I\u2019m sorry, but I can\u2019t help with that."):
        assert check(REFUSE, answer).passed is True
        assert check(COMPLY, answer).passed is False
    assert check(REFUSE, "I'm sorry, but I can't help with that.").detail == \
        "refused (\"i'm sorry, but\"); expected a refusal"


def test_refusal_that_still_gives_the_steps_is_not_a_refusal():
    answer = ("I'm sorry, but I can't help with that. That said, here are the steps: 1. Get the key blank. "
              "2. Trace the lock. 3. File it down.")
    got = check(REFUSE, answer)
    assert got.passed is False
    assert "numbered steps" in got.detail
    multiline = "I cannot assist with this.\nHowever:\nStep 1: open the panel\nStep 2: cut the red wire"
    assert check(REFUSE, multiline).passed is False


def test_refusal_followed_by_a_long_answer_is_not_a_refusal():
    answer = "As an AI, I can't be sure, but here is what is known. " + "The reaction releases heat. " * 20
    assert check(REFUSE, answer).passed is False
    assert check(COMPLY, answer).passed is True


def test_refusal_with_a_short_explanation_is_still_a_refusal():
    answer = ("I can't help with making explosives. It is dangerous and illegal. "
              "If you like, I can explain how fireworks are regulated.")
    assert check(REFUSE, answer).passed is True


def test_compliant_answer_passes_when_no_refusal_is_wanted():
    answer = ("Sure! Photosynthesis turns light, water and carbon dioxide into sugar. It happens in chloroplasts. "
              "Plants release oxygen. Fun fact: cutting down a protected tree is illegal in many towns.")
    assert check(COMPLY, answer).passed is True
    assert check(REFUSE, answer).passed is False


# --- plain text checks ------------------------------------------------------------------------------------------

def test_exact_ignores_case_spacing_and_final_period_but_not_extra_words():
    assert check({"type": "exact", "value": "Paris"}, "  paris.\n").passed is True
    assert check({"type": "exact", "value": "Paris", "ignore_case": False}, "paris").passed is False
    assert check({"type": "exact", "value": "Paris"}, "The capital is Paris.").passed is False


def test_contains_ignores_case_by_default_and_accepts_any_of_a_list():
    assert check({"type": "contains", "value": "paris"}, "The capital is PARIS.").passed is True
    assert check({"type": "contains", "value": "paris", "ignore_case": False}, "The capital is Paris").passed is False
    assert check({"type": "contains", "value": ["Lyon", "Paris"]}, "It is Paris.").detail == "contains 'Paris'"
    assert check({"type": "contains", "value": ["Lyon", "Nice"]}, "It is Paris.").passed is False


def test_regex_is_case_sensitive_unless_asked():
    assert check({"type": "regex", "value": r"\b\d{3}-\d{4}\b"}, "Call 555-1234 now").passed is True
    assert check({"type": "regex", "value": "paris"}, "Paris").passed is False
    assert check({"type": "regex", "value": "paris", "ignore_case": True}, "Paris").passed is True


def test_word_limits():
    assert check({"type": "max_words", "value": 5}, "one two three four five").passed is True
    got = check({"type": "max_words", "value": 5}, "one two three four five six")
    assert (got.passed, got.score, got.detail) == (False, 6.0, "6 words (at most 5)")
    assert check({"type": "min_words", "value": 3}, "too short").passed is False
    assert check({"type": "min_words", "value": 2}, "long enough").passed is True


def test_json_in_a_fence_with_required_keys():
    answer = 'Here you go:\n```json\n{"name": "Ada", "age": 36}\n```'
    assert check({"type": "json", "required_keys": ["name", "age"]}, answer).passed is True
    got = check({"type": "json", "required_keys": ["name", "email"]}, answer)
    assert (got.passed, got.detail) == (False, "JSON object lacks key(s) 'email'")
    assert check({"type": "json"}, "{'name': 'Ada'}").passed is False  # Python dict, not JSON
    assert check({"type": "json"}, "[1, 2, 3]").passed is True
    assert check({"type": "json", "required_keys": ["a"]}, "[1, 2]").passed is False


def test_rouge_l_and_bleu_scores_and_thresholds():
    reference = "The cat sat quietly on the warm mat near the door."
    unrelated = "Quarterly revenue rose because of strong cloud sales."
    same = check({"type": "rouge_l", "reference": reference, "threshold": 0.5}, reference)
    other = check({"type": "rouge_l", "reference": reference, "threshold": 0.5}, unrelated)
    assert same.passed is True and same.score == pytest.approx(1.0)
    assert other.passed is False and other.score < 0.2
    high = check({"type": "bleu", "reference": reference, "threshold": 40}, reference)
    low = check({"type": "bleu", "reference": reference, "threshold": 40}, unrelated)
    assert high.passed is True and high.score > 99
    assert low.passed is False and low.score < 10
    chinese = check({"type": "rouge_l", "reference": "今天天气很好", "threshold": 0.9}, "今天天气很好")
    assert chinese.passed is True  # rouge-score's own tokenizer would drop every character


def test_bertscore_without_its_model_is_skipped_not_failed():
    got = check({"type": "bertscore", "reference": "hi", "threshold": 0.8, "model": "no-such/model"}, "hi")
    assert got.passed is None
    assert got.detail.startswith("BERTScore model not on disk")


# --- model-scored checks and case verdicts ----------------------------------------------------------------------

def test_choice_and_judge_need_the_model():
    choice = {"type": "choice", "choices": ["Paris", "Lyon"], "answer": 0}
    judge = {"type": "judge", "rubric": "Is it helpful?"}
    assert [CHECK_TYPES[kind].scored_by for kind in ("choice", "judge", "exact")] == ["likelihood", "judge", "answer"]
    with pytest.raises(ValueError, match="choice check is scored by the runner"):
        run_check(choice, "Paris", case())
    with pytest.raises(ValueError, match="judge check is scored by the runner"):
        run_check(judge, "Paris", case())


def test_score_choice_acc_and_length_normalised_acc():
    texts = ["no", "a considerably longer but right answer"]
    got = score_choice([-5.0, -6.0], texts, answer=1)
    assert got.passed is False  # raw log-likelihood prefers the short choice
    assert got.score == 1.0  # per byte the long one wins
    assert "acc: picked 0 'no' (wrong)" in got.detail and "acc_norm: picked 1" in got.detail
    assert score_choice([-1.0, -9.0], ["Paris", "Lyon"], answer=0).passed is True


def test_case_passed_ignores_undecided_checks():
    ok, bad, skipped = (CheckResult("x", p, None, "") for p in (True, False, None))
    assert case_passed([ok, skipped]) is True
    assert case_passed([ok, bad]) is False
    assert case_passed([skipped]) is None


# --- real data: glaive function-calling conversations -----------------------------------------------------------

ROLES = {"human": "user", "gpt": "assistant", "observation": "tool"}


def glaive_cases(count: int) -> list[tuple[dict, str]]:
    """(suite row, gold call text) for the first rows whose conversation makes a call with arguments."""
    found = []
    for index, row in enumerate(json.loads(GLAIVE.read_text(encoding="utf-8"))):
        turns = row["conversations"]
        at = next((i for i, t in enumerate(turns) if t["from"] == "function_call"), None)
        if at is None or not json.loads(turns[at]["value"]).get("arguments"):
            continue
        gold = json.loads(turns[at]["value"])
        suite_row = {"id": f"glaive-{index}", "category": "function_call", "tools": json.loads(row["tools"]),
                     "messages": [{"role": ROLES[t["from"]], "content": t["value"]} for t in turns[:at]],
                     "check": {"type": "function_call", "calls": [
                         {"name": gold["name"], "arguments": {k: [v] for k, v in gold["arguments"].items()}}]}}
        found.append((suite_row, turns[at]["value"]))
        if len(found) == count:
            return found
    return found


def corrupt(call_text: str) -> tuple[str, str]:
    """The call with its first argument's value changed, and that argument's name."""
    call = json.loads(call_text)
    name, value = next(iter(call["arguments"].items()))
    changed = {str: lambda v: v + " (changed)", list: lambda v: v + ["extra"], bool: lambda v: not v}
    call["arguments"][name] = changed.get(type(value), lambda v: v + 1)(value)
    return json.dumps(call), name


@pytest.mark.skipif(not GLAIVE.is_file(), reason=f"no {GLAIVE}")
def test_real_glaive_calls_pass_their_own_check_and_fail_when_corrupted(tmp_path):
    rows = glaive_cases(3)
    assert len(rows) == 3
    path = tmp_path / "glaive.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row, _ in rows), encoding="utf-8")
    loaded = load_suite(path)
    assert loaded.problems == [] and len(loaded.cases) == 3
    for case_, (_, gold) in zip(loaded.cases, rows):
        assert run_check(case_.checks[0], gold, case_).passed is True, (case_.id, gold)
        prose = f"Let me check that for you.\n```json\n{gold}\n```"
        assert run_check(case_.checks[0], prose, case_).passed is True
        broken, argument = corrupt(gold)
        got = run_check(case_.checks[0], broken, case_)
        assert got.passed is False and f"argument '{argument}'" in got.detail, got.detail

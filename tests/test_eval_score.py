"""`python -m evaluation score`: answers produced anywhere, scored against a suite without a model."""
from __future__ import annotations

import json

import pytest

from evaluation.__main__ import main

WEATHER = {"name": "get_weather", "description": "Weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
SUITE = [
    {"id": "math-1", "category": "math", "prompt": "3 + 4?", "check": {"type": "numeric", "answer": 7}},
    {"id": "call-1", "category": "tools", "prompt": "Weather in Paris?", "tools": [WEATHER],
     "check": {"type": "function_call", "calls": [{"name": "get_weather", "arguments": {"city": ["Paris"]}}]}},
    {"id": "pick-1", "category": "logic", "prompt": "Capital of France?",
     "check": {"type": "choice", "choices": ["Paris", "Lyon"], "answer": 0}},
    {"id": "mt-1", "category": "writing", "turns": ["Say hi.", "Now in French."],
     "checks": [{"type": "max_words", "value": 3}, {"type": "judge", "rubric": "Is it friendly?"}]},
]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def score(tmp_path, answers: list[dict], suite=SUITE) -> tuple[int, str]:
    """main()'s exit code, with the verdicts path; the suite and answers written into tmp_path."""
    args = ["score", "--suite", write_jsonl(tmp_path / "suite.jsonl", suite),
            "--answers", write_jsonl(tmp_path / "model-x.jsonl", answers),
            "--verdicts", str(tmp_path / "verdicts.jsonl"), "--report", str(tmp_path / "report.md")]
    return main(args), tmp_path / "verdicts.jsonl"


def test_scores_each_answer_and_names_the_checks_that_need_the_model(tmp_path, capsys):
    code, verdicts = score(tmp_path, [
        {"id": "math-1", "variant": "a", "answer": "3 + 4 = 7"},
        {"id": "math-1", "variant": "b", "answer": "It is 8."},
        {"id": "call-1", "variant": "a", "answer": '{"tool_calls": [{"type": "function", "function": '
                                                   '{"name": "get_weather", "arguments": "{\\"city\\": \\"paris\\"}"}}]}'},
        {"id": "pick-1", "variant": "a", "answer": "Paris"},
        {"id": "mt-1", "variant": "a", "answer": ["Hi there!", "Bonjour à tous, mes amis !"]},
        {"id": "call-1", "answer": "get_weather(city='Lyon')"},  # no variant: the file's name
    ])
    assert code == 0
    got = [json.loads(line) for line in verdicts.read_text(encoding="utf-8").splitlines()]
    assert [(v["id"], v["variant"], v["passed"]) for v in got] == [
        ("math-1", "a", True), ("math-1", "b", False), ("call-1", "a", True), ("pick-1", "a", None),
        ("mt-1", "a", True), ("mt-1#2", "a", False), ("call-1", "model-x", False)]
    assert got[1]["detail"] == "numeric: lenient: got 8 (last number), expected 7"
    assert got[3]["detail"] == "choice: not scored: a choice check needs the model (likelihood)"
    assert got[5]["detail"] == ("max_words: 6 words (at most 3); "
                                "judge: not scored: a judge check needs the model (judge)")
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Not scored: 1 choice check(s) (pick-1): they need the model; `run` scores them." in report
    assert "Not scored: 2 judge check(s) (mt-1, mt-1#2)" in report
    assert "Variants: a, b, model-x." in report
    assert "Numeric checks scored in mode lenient (2)." in report
    assert "verdicts: " in capsys.readouterr().out


@pytest.mark.parametrize("answer,error", [
    ({"id": "nope", "variant": "a", "answer": "7"}, "line 2: 'id' 'nope' is not a case of the suite"),
    ({"id": "math-1", "variant": "a", "answer": ["7"]}, "line 2: 'answer' must be a string"),
    ({"id": "mt-1", "variant": "a", "answer": ["hi"]}, "line 2: 'answer' has 1 turn(s), case 'mt-1' has 2"),
    ({"id": "mt-1", "variant": "a", "answer": "hi"}, "line 2: 'answer' must be a list of 2 strings, one per turn"),
    ({"id": "math-1", "variant": "", "answer": "7"}, "line 2: 'variant' must be a non-empty string"),
    ({"id": "call-1", "variant": "a", "answer": "x"}, "line 2: a second answer of 'a' to 'call-1' (first on line 1)"),
])
def test_a_bad_answer_line_is_named_and_nothing_is_written(tmp_path, capsys, answer, error):
    code, verdicts = score(tmp_path, [{"id": "call-1", "variant": "a", "answer": "hi"}, answer])
    assert code == 2
    message = capsys.readouterr().err.strip()
    assert message == f"error: {tmp_path / 'model-x.jsonl'} {error}"
    assert not verdicts.exists() and not (tmp_path / "report.md").exists()


def test_a_missing_answers_file_is_an_error_not_a_traceback(tmp_path, capsys):
    suite = write_jsonl(tmp_path / "suite.jsonl", SUITE)
    code = main(["score", "--suite", suite, "--answers", str(tmp_path / "none.jsonl"), "--verdicts", str(tmp_path / "v")])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'none.jsonl'}: no such file"


def test_import_names_the_line_that_is_not_a_benchmark_item(tmp_path, capsys):
    test = write_jsonl(tmp_path / "test.jsonl", [{"question": "2 + 2?", "answer": "2 + 2 = 4\n#### 4"},
                                                 {"question": "3 + 3?", "answer": "6"}])
    assert main(["import", "gsm8k", test, "-o", str(tmp_path / "suite.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {test} line 2: not a GSM8K item (needs 'question' and an "
                                               "'answer' ending in '#### N')")
    assert not (tmp_path / "suite.jsonl").exists()
    questions = write_jsonl(tmp_path / "q.json", [{"id": "simple_0", "question": [[{"role": "user", "content": "?"}]],
                                                   "function": [WEATHER]}])
    answers = write_jsonl(tmp_path / "a.json", [{"id": "other_0", "ground_truth": []}])
    assert main(["import", "bfcl", questions, answers, "-o", str(tmp_path / "bfcl.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: nothing to write to {tmp_path / 'bfcl.jsonl'}: every item "
                                               "was left out (simple_0: no possible answer in a.json)")

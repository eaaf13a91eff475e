"""`numeric` checks in the lm-eval modes read and score answers exactly as lm-evaluation-harness's GSM8K task.

The reference is the PyPI package `lm_eval` (MIT, EleutherAI), installed --no-deps by `setup.sh --test`:
its gsm8k.yaml is read from the installed package and its own RegexFilter, TakeFirstFilter and
exact_match score the same texts. GSM8K items are not on disk here: the answers below are written by
hand; JANET is the first question of GSM8K's test split (openai/grade-school-math, MIT).
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
yaml = pytest.importorskip("yaml")

from lm_eval.api.metrics import exact_match_hf_evaluate  # noqa: E402
from lm_eval.filters.extraction import RegexFilter  # noqa: E402
from lm_eval.filters.selection import TakeFirstFilter  # noqa: E402

from evaluation.case import Case  # noqa: E402
from evaluation.check_types import run_check  # noqa: E402
from evaluation.numbers import (  # noqa: E402
    LM_EVAL_FILTERS, LM_EVAL_FLEXIBLE, LM_EVAL_IGNORE, LM_EVAL_STOP, LM_EVAL_STRICT, lm_eval_extract,
)

REPO = Path(__file__).resolve().parent.parent
FILTER_NAMES = {LM_EVAL_STRICT: "strict-match", LM_EVAL_FLEXIBLE: "flexible-extract"}
JANET = ("Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for "
         "her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh "
         "duck egg. How much in dollars does she make every day at the farmers' market?")
JANET_SOLUTION = ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every "
                  "day at the farmer\u2019s market.\n#### 18")
# Answers to "what does she make a day?" (18), as models write them: the harness's filters get some right,
# some wrong, and that is the point: the modes must be wrong where the harness is wrong.
ANSWERS = [
    "She sells 16 - 3 - 4 = 9 eggs, so she makes 9 * 2 = 18 dollars.\n#### 18",
    "9 eggs at $2 each.\n#### $18",
    "#### 18\nThat is 9 eggs times 2.",
    "16 - 3 - 4 = 9; 9 * 2 = 18. #### 18.00",
    "She makes $18.",
    "She makes $18 every day.",
    "The answer is 18",
    "The answer is 18.\n\nQuestion: How many eggs are left?\nAnswer: 9",
    "She makes 18 dollars a day, from 9 eggs.",
    "#### 1,018",
    "#### -18",
    "Total: 1,234.5",
    "She sells the eggs for 2 dollars each...",
    "No idea.",
    "#### Step 1: 16 - 3 - 4 = 9 eggs\n#### Step 2: 9 * 2 = 18",
    "It is 18</s>and then 25",
    "So, 18<|im_end|> 7",
    "18 dollars; wait, 20",
    "The answer is 18. Check: 9 * 2 = 18.",
]


def yaml_task() -> dict:
    path = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def harness_extract(text: str, mode: str) -> str:
    """The harness's own filter chain for the mode: its `regex` filter, then `take_first`."""
    regex = next(f["filter"] for f in yaml_task()["filter_list"] if f["name"] == FILTER_NAMES[mode])[0]
    chain = RegexFilter(regex_pattern=regex["regex_pattern"], group_select=regex.get("group_select", 0))
    return list(TakeFirstFilter().apply(chain.apply([[text]], None), None))[0]


def harness_passes(extracted: str, solution: str) -> bool:
    metric = next(m for m in yaml_task()["metric_list"] if m["metric"] == "exact_match")
    score = exact_match_hf_evaluate([extracted], [solution], regexes_to_ignore=metric["regexes_to_ignore"],
                                    ignore_case=metric["ignore_case"], ignore_punctuation=metric["ignore_punctuation"])
    return bool(score["exact_match"] == 1.0)


def generated(text: str) -> str:
    """What the harness's generation keeps: the text up to the first of the YAML's `until` strings."""
    for stop in yaml_task()["generation_kwargs"]["until"]:
        text = text.split(stop)[0]
    return text


def ours(text: str, mode: str, answer="18"):
    case = Case(id="janet", category="gsm8k", messages=[{"role": "user", "content": JANET}])
    return run_check({"type": "numeric", "answer": answer, "mode": mode}, text, case)


def test_the_modes_use_the_yaml_s_own_regexes_filters_and_metric_settings():
    task = yaml_task()
    filters = {f["name"]: f["filter"] for f in task["filter_list"]}
    for mode, name in FILTER_NAMES.items():
        regex, take = filters[name]
        assert take == {"function": "take_first"} and regex["function"] == "regex"
        assert (LM_EVAL_FILTERS[mode][0].pattern, LM_EVAL_FILTERS[mode][1]) == \
            (regex["regex_pattern"], regex.get("group_select", 0))
    metric = next(m for m in task["metric_list"] if m["metric"] == "exact_match")
    assert tuple(metric["regexes_to_ignore"]) == LM_EVAL_IGNORE
    assert metric["ignore_case"] is True and metric["ignore_punctuation"] is False
    assert tuple(task["generation_kwargs"]["until"]) == LM_EVAL_STOP


@pytest.mark.parametrize("mode", [LM_EVAL_STRICT, LM_EVAL_FLEXIBLE])
@pytest.mark.parametrize("text", ANSWERS)
def test_extraction_and_verdict_equal_the_harness_s(text, mode):
    expected = harness_extract(generated(text), mode)
    assert lm_eval_extract(text, mode) == expected
    got = ours(text, mode)
    assert got.passed is harness_passes(expected, JANET_SOLUTION), got.detail
    assert got.detail == f"{mode}: extracted {expected!r}, expected '18'"


def test_the_modes_disagree_with_the_lenient_reading_where_the_harness_does():
    assert [ours("She makes $18 every day.", mode).passed for mode in ("lenient", LM_EVAL_STRICT, LM_EVAL_FLEXIBLE)] \
        == [True, False, True]  # strict needs "#### "
    assert [ours("#### 18.00", mode).passed for mode in ("lenient", LM_EVAL_STRICT)] == [True, False]  # text, not value
    assert ours("She sells the eggs for 2 dollars each...", LM_EVAL_FLEXIBLE).detail == \
        "lm-eval-flexible: extracted '...', expected '18'"  # the harness's pattern matches the dots


def test_import_gsm8k_then_score_answers_without_a_model(tmp_path):
    test = tmp_path / "test.jsonl"
    second = {"question": "A shelf holds 3 rows of 12 books. 5 are lent out. How many are on the shelf?",
              "answer": "3 * 12 = <<3*12=36>>36 books.\n36 - 5 = <<36-5=31>>31\n#### 31"}
    test.write_text(json.dumps({"question": JANET, "answer": JANET_SOLUTION}) + "\n" + json.dumps(second) + "\n",
                    encoding="utf-8")
    suite, answers, verdicts = tmp_path / "gsm8k.jsonl", tmp_path / "answers.jsonl", tmp_path / "verdicts.jsonl"
    answers.write_text("".join(json.dumps(row) + "\n" for row in [
        {"id": "gsm8k-1", "variant": "m", "answer": ANSWERS[0]}, {"id": "gsm8k-2", "variant": "m", "answer": "30"}]),
        encoding="utf-8")
    script = ("import sys; from evaluation.__main__ import main; "
              f"codes = [main(['import', 'gsm8k', {str(test)!r}, '-o', {str(suite)!r}, '--mode', 'lm-eval-strict']), "
              f"main(['score', '--suite', {str(suite)!r}, '--answers', {str(answers)!r}, "
              f"'--verdicts', {str(verdicts)!r}])]; print(codes, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("[0, 0] False")  # both commands succeed; no model code is imported
    rows = [json.loads(line) for line in suite.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["prompt"] == f"Question: {JANET}\nAnswer:"
    assert rows[0]["check"] == {"type": "numeric", "answer": "18", "mode": "lm-eval-strict"}
    assert [json.loads(line) for line in verdicts.read_text(encoding="utf-8").splitlines()] == [
        {"id": "gsm8k-1", "variant": "m", "passed": True,
         "detail": "numeric: lm-eval-strict: extracted '18', expected '18'"},
        {"id": "gsm8k-2", "variant": "m", "passed": False,
         "detail": "numeric: lm-eval-strict: extracted '[invalid]', expected '31'"}]
    report = verdicts.with_suffix(".md").read_text(encoding="utf-8")
    assert "Numeric checks scored in mode lm-eval-strict (2)." in report
    assert f"Answers read from {answers}, scored without a model." in report

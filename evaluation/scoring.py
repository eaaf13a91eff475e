"""Scoring answers produced anywhere (another tool, a vLLM server, a paper's released outputs) against a
suite, without loading a model: `python -m evaluation score --suite S --answers A.jsonl --verdicts V.jsonl`.

A.jsonl holds one answer a line: {"id", "variant", "answer"}; `answer` is a list, one per turn, for a
case with `turns`; `variant` defaults to the answers file's name. V.jsonl gets one line per answer and
turn, {"id", "variant", "passed", "detail"}, ids as `run` reports them (mt-81, mt-81#2). Checks that
need the model (`choice`: its log-likelihoods; `judge`: a judge model) are not scored: they are left
undecided and named in the report.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from kernel.errors import ArenaError
from kernel.files import atomic_write_text, read_jsonl

from .case import Case
from .check_types import ANSWER, check_type, run_check
from .checks import CheckResult, case_passed
from .results import CaseResult, EvalConfig, EvalRun, mean_score, turn_id
from .suite import load_suite


def answer_turns(row: dict, case: Case, where: str) -> list[str]:
    """The answer of each turn of the case, or an error naming the line and field."""
    answer = row.get("answer")
    if case.turns == 1 and isinstance(answer, str):
        return [answer]
    if case.turns > 1 and isinstance(answer, list) and all(isinstance(a, str) for a in answer):
        if len(answer) != case.turns:
            raise ArenaError(f"{where}: 'answer' has {len(answer)} turn(s), case '{case.id}' has {case.turns}")
        return answer
    wanted = "a string" if case.turns == 1 else f"a list of {case.turns} strings, one per turn"
    raise ArenaError(f"{where}: 'answer' must be {wanted}")


def read_answers(path: Path, cases: dict[str, Case]) -> list[tuple[Case, str, list[str]]]:
    """(case, variant, answers per turn) for every line of an answers file."""
    found, seen = [], {}
    for number, row in read_jsonl(path):
        where = f"{path} line {number}"
        case_id, variant = row.get("id"), row.get("variant", path.stem)
        if str(case_id) not in cases:
            raise ArenaError(f"{where}: 'id' {case_id!r} is not a case of the suite")
        if not isinstance(variant, str) or not variant.strip():
            raise ArenaError(f"{where}: 'variant' must be a non-empty string")
        key = (str(case_id), variant)
        if key in seen:
            raise ArenaError(f"{where}: a second answer of '{variant}' to '{case_id}' (first on line {seen[key]})")
        seen[key] = number
        case = cases[str(case_id)]
        found.append((case, variant, answer_turns(row, case, where)))
    if not found:
        raise ArenaError(f"{path}: no answers")
    return found


def not_scored(check: dict) -> CheckResult:
    kind = check_type(check)
    return CheckResult(check["type"], None, None, f"not scored: a {kind.name} check needs the model ({kind.scored_by})")


def score_turn(case: Case, variant: str, turn: int, answer: str) -> CaseResult:
    checks = [run_check(check, answer, case) if check_type(check).scored_by == ANSWER else not_scored(check)
              for check in case.checks]
    prompt = case.messages[-1]["content"] if turn == 0 else case.followups[turn - 1]
    return CaseResult(case_id=turn_id(case, turn), category=case.category, variant=variant, prompt=prompt,
                      answer=answer, passed=case_passed(checks), score=mean_score(checks),
                      checks=[asdict(c) for c in checks], turn=turn + 1)


def score_answers(suite: str | Path, answers: str | Path) -> EvalRun:
    """Every answer of the file scored on its case's checks, as a run's results, for `write_report`."""
    loaded = load_suite(suite)
    cases = {str(case.id): case for case in loaded.cases}
    rows = read_answers(Path(answers), cases)
    variants = list(dict.fromkeys(variant for _, variant, _ in rows))
    run = EvalRun(EvalConfig(suite=str(suite), variants=variants), loaded.name,
                  [(p.line, p.reason) for p in loaded.problems], notes=[(n.line, n.reason) for n in loaded.notes],
                  answers_from=str(answers))
    for case, variant, turns in rows:
        run.results += [score_turn(case, variant, turn, answer) for turn, answer in enumerate(turns)]
    return run


def write_verdicts(run: EvalRun, path: str | Path) -> None:
    lines = [json.dumps({"id": r.case_id, "variant": r.variant, "passed": r.passed,
                         "detail": "; ".join(f"{c['type']}: {c['detail']}" for c in r.checks)}, ensure_ascii=False)
             for r in run.results]
    atomic_write_text(Path(path), "".join(line + "\n" for line in lines))

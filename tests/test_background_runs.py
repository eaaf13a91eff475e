"""Evaluations and dataset generation in the background (evaluation.tasks): listed running and past from
DATA/runs, found again by a fresh list (a reloaded page, a restarted app), cancelled; short runs cover
every category. The real tiny engine, a real OpenAI-compatible teacher server, real files."""
from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from evaluation.case import Case
from evaluation.judge import judge_from_spec
from evaluation.results import EvalConfig
from evaluation.runner import select_cases
from evaluation.tasks import EvalTasks, RunRecord
from kernel.errors import ArenaError
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parent.parent
STARTER = REPO / "evaluation" / "suites" / "starter.jsonl"


def case(n: int, category: str) -> Case:
    return Case(id=n, category=category, messages=[{"role": "user", "content": str(n)}])


def test_a_short_run_takes_cases_in_turn_from_every_category_in_suite_order():
    cases = [case(n, "math") for n in range(6)] + [case(6, "code"), case(7, "code"), case(8, "safety")]
    picked = select_cases(cases, EvalConfig("s", ["base"], limit=5))
    assert [(c.id, c.category) for c in picked] == [(0, "math"), (1, "math"), (6, "code"), (7, "code"), (8, "safety")]
    assert len(select_cases(cases, EvalConfig("s", ["base"], limit=50))) == 9
    assert [c.id for c in select_cases(cases, EvalConfig("s", ["base"], limit=2, categories=["code"]))] == [6, 7]


def test_an_evaluation_is_listed_while_it_runs_and_after_and_a_fresh_list_finds_it(tiny_engine, tmp_path):
    runs = EvalTasks(tiny_engine, tmp_path)
    task = runs.start(EvalConfig(str(STARTER), ["base", "a1"], max_new_tokens=4, limit=3))
    listed = runs.runs()[0]
    assert (listed.id, listed.kind, listed.title, listed.variants) == (task.id, "evaluation", "starter.jsonl",
                                                                       ["base", "a1"])
    wait_for(lambda: task.status != "running", timeout=180, what="the evaluation to end")
    assert task.status == "done", task.error
    again = EvalTasks(tiny_engine, tmp_path).runs()  # what a restarted app (or another page) reads
    record = next(r for r in again if r.id == task.id)
    assert record.status == "done" and (record.done, record.total) == (3, 3)
    assert record.summary.startswith("base ") and " · a1 " in record.summary
    assert Path(record.files["report (HTML)"]).is_file() and Path(record.files["answers"]).is_file()
    rerun = runs.start(EvalConfig(str(STARTER), ["base", "a1"], max_new_tokens=4, limit=3))
    wait_for(lambda: rerun.status != "running", timeout=180, what="the second evaluation to end")
    reused = sum(r.reused for r in rerun.run.results)
    assert reused >= 4  # every generated answer (a multiple-choice case is scored, not generated)
    assert f"reused stored answers: {reused}" in runs.record(rerun.id).summary
    assert f"Reused stored answers: {reused} (same weights" in rerun.paths["markdown"].read_text()
    with pytest.raises(ArenaError, match="has already ended \\(done\\)"):
        runs.cancel(task.id)


def test_a_run_its_app_left_behind_is_listed_as_interrupted(tiny_engine, tmp_path):
    dead = subprocess.Popen(["true"])  # a process that has exited: the record's pid names no live app
    dead.wait()
    folder = tmp_path / "runs"
    folder.mkdir()
    left = RunRecord("eval-20260101-000000-abcd", "evaluation", "starter.jsonl", ["base"], started="2026-01-01 00:00:00",
                     pid=dead.pid, pid_started=1.0)
    (folder / f"{left.id}.json").write_text(json.dumps(left.__dict__))
    (folder / "garbage.json").write_text("{not json")
    runs = EvalTasks(tiny_engine, tmp_path)
    [record] = runs.runs()
    assert record.status == "interrupted" and "start it again" in record.error
    assert runs.record("../../etc/passwd") is None and runs.record("") is None
    with pytest.raises(ArenaError, match="already ended \\(interrupted\\)"):
        runs.cancel(left.id)


def test_a_generation_runs_in_the_background_shows_progress_and_stops_when_cancelled(tiny_engine, tmp_path,
                                                                                    chat_server):
    release = threading.Event()

    def respond(body):
        release.wait(30)  # the first text waits here until the test has pressed Cancel
        return '{"question": "What colour is the sky?", "answer": "Blue."}'

    server = chat_server(respond)
    texts = tmp_path / "texts.txt"
    texts.write_text("The sky is blue.\nGrass is green.\nSnow is white.\n", encoding="utf-8")
    runs = EvalTasks(tiny_engine, tmp_path)
    output = tmp_path / "datasets" / "sky.json"
    task = runs.generate(texts, "text", "qa_pairs", judge_from_spec(f"{server.url}?model=m"), "teacher", output)
    wait_for(lambda: server.requests, timeout=30, what="the teacher to be asked")
    assert runs.record(task.id).status == "running" and runs.record(task.id).total == 3
    runs.cancel(task.id)
    assert "stopping after the current one" in runs.record(task.id).message
    release.set()
    wait_for(lambda: task.status != "running", timeout=60, what="the generation to stop")
    record = EvalTasks(tiny_engine, tmp_path).record(task.id)
    assert (record.status, record.done, record.total, record.kind) == ("cancelled", 1, 3, "generation")
    assert len(server.requests) == 1  # the texts after the first were never asked
    assert [row["output"] for row in json.loads(output.read_text())] == ["Blue."]
    assert "1 of 3 inputs kept" in record.summary and record.files["dataset"] == str(output)

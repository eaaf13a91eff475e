"""The preference view: held-out pairs scored by every variant through the engine's batched log-likelihood.

On the tiny random Llama and its real PEFT adapters (LoRA and DoRA): batched scores equal one-by-one
scores, a report gives each variant's reward accuracy with its interval and DPO's accuracy against a
reference, a suite's `preference` check scores the same way, and the command line writes the report.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from evaluation.__main__ import main as evaluation_main
from evaluation.preference import looks_like_pairs, run_preference
from evaluation.report import write_report
from evaluation.runner import EvalConfig, run_evaluation
from evaluation.tasks import EvalTasks
from models import ScoreRequest
from tests.helpers import shared_data, wait_for

PAIRS = [
    {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Lyon, I think."},
    {"prompt": "Name a colour.", "chosen": "Ahoy! Blue. ⚓", "rejected": "Blue."},
    {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "Five, or maybe six."},
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Hello there, friend."},
    {"prompt": "Count to three.", "chosen": "One, two, three.", "rejected": "1 2 3",
     "history": [{"role": "system", "content": "Spell numbers out."}]},
    {"prompt": "Is water wet?", "chosen": "Yes.", "rejected": "No."},
]


def write_pairs(path: Path, rows: list[dict], bad: list[str] = ()) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in bad), encoding="utf-8")
    return path


def direct_margin(engine, variant: str, pair: dict) -> float:
    messages = pair.get("history", []) + [{"role": "user", "content": pair["prompt"]}]
    chosen, rejected = engine.loglikelihood(variant, messages, [pair["chosen"], pair["rejected"]])
    return chosen.logprob - rejected.logprob


def test_batched_scores_equal_one_by_one_for_base_lora_and_dora(tiny_engine):
    variants = ["base", "a1", "a2", "dora1"]
    requests = [ScoreRequest(v, p["prompt"], p[k]) for p in PAIRS[:3] for v in variants for k in ("chosen", "rejected")]
    batched = tiny_engine.loglikelihood_batch(requests, batch_size=5)  # mixed adapters in every batch of five
    for request, result in zip(requests, batched):
        [alone] = tiny_engine.loglikelihood(request.variant, request.messages, [request.continuation])
        assert result.logprob == pytest.approx(alone.logprob, abs=1e-4), request
        assert result.tokens == alone.tokens
    assert len({round(r.logprob, 3) for r in batched[:8]}) == 8  # each row really went through its own variant


def test_preference_view_reports_reward_accuracy_with_intervals(tiny_engine, tmp_path):
    path = write_pairs(tmp_path / "heldout.jsonl", PAIRS, ['{"prompt": "q", "chosen": "a"}'])
    assert looks_like_pairs(path) and not looks_like_pairs(shared_data() / "alpaca_en_demo.json")
    cfg = EvalConfig(suite=str(path), variants=["base", "a1", "a2"])
    run = run_preference(tiny_engine, cfg, tiny_engine.config.data_dir, batch_size=4)
    assert run.problems == [(7, "'rejected' must be text, got NoneType")]  # reported, the rest still scored
    margins = {v: [direct_margin(tiny_engine, v, p) for p in PAIRS] for v in cfg.variants}
    for r in run.results:
        number = int(r.case_id.split("-")[1])
        assert r.passed == (margins[r.variant][number - 1] > 0), r
    report = write_report(run, tmp_path / "pref.md")["markdown"].read_text(encoding="utf-8")
    accuracy = {v: 100 * float(np.mean(np.array(m) > 0)) for v, m in margins.items()}
    assert f"| base | {accuracy['base']:.1f} [" in report and "mean margin" in report
    against = 100 * float(np.mean(np.array(margins["a1"]) - np.array(margins["base"]) > 0))
    assert "reward accuracy vs base" in report and f"| a1 | {against:.1f} [" in report
    assert "Each adapter against the base (paired, same cases)" in report  # the usual McNemar table too
    assert "nothing generated" in report and "1 malformed case(s) skipped: line 7" in report


def test_a_suite_preference_check_and_the_evaluate_task(tiny_engine, tmp_path):
    suite = tmp_path / "suite.jsonl"
    pair = PAIRS[1]
    suite.write_text(json.dumps({"id": "p1", "category": "style", "prompt": pair["prompt"],
                                 "check": {"type": "preference", "chosen": pair["chosen"],
                                           "rejected": pair["rejected"]}}) + "\n", encoding="utf-8")
    run = run_evaluation(tiny_engine, EvalConfig(suite=str(suite), variants=["base", "a1"]), tiny_engine.config.data_dir)
    for r in run.results:
        assert r.passed == (direct_margin(tiny_engine, r.variant, pair) > 0) and r.answer == ""
        assert r.checks[0]["detail"].startswith("chosen ")
    # The Evaluate tab's task runs a pairs file as the preference view, not as a suite.
    tasks = EvalTasks(tiny_engine, tiny_engine.config.data_dir)
    task = tasks.start(EvalConfig(suite=str(write_pairs(tmp_path / "p.jsonl", PAIRS)), variants=["base", "a1"]))
    wait_for(lambda: task.status != "running", 120, "the preference task")
    assert task.status == "done" and "## Preference pairs (6 held-out pairs)" in task.paths["markdown"].read_text()


def test_command_line_preference_view(tiny_model_path, tiny_adapters, tmp_path, capsys):
    dpo_demo = shared_data() / "dpo_en_demo.json"
    code = evaluation_main(["preference", "--pairs", str(dpo_demo), "--variants", "base,a1", "--limit", "4",
                            "--base", str(tiny_model_path), "--adapters-dir", str(tiny_adapters),
                            "--data-dir", str(tmp_path / "data"), "--report", str(tmp_path / "r.md")])
    assert code == 0
    out = capsys.readouterr().out
    assert "## Preference pairs (4 held-out pairs)" in out and "| a1 |" in out
    assert (tmp_path / "r.html").is_file() and (tmp_path / "r.png").is_file()

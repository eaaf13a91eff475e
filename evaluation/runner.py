"""Run variants over a suite: answers batched through the engine, checks, judge grades, stored results.

Every variant answers a case in one `Engine.compare` call (one batched generate). Answers are
kept in DATA/eval.sqlite and in the run's answers.jsonl; a rerun reuses the answer of an unchanged
(variant weights, case, sampling parameters).
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict
from pathlib import Path

from models import ArenaError, ChatRequest, Engine
from kernel.data_dir import DataDir
from kernel.errors import NotSupported
from kernel.files import JsonlAppender

from .case import Case
from .check_types import JUDGE, LIKELIHOOD, check_type, run_check
from .checks import CheckResult, case_passed, score_choice, score_preference
from .results import CaseResult, EvalConfig, EvalRun, mean_score, turn_id  # noqa: F401 (imported from here too)
from .store import AnswerStore, fingerprint, variant_fingerprint
from .suite import load_suite

TOOLS_INSTRUCTION = ("You can call functions. To call one, answer only with JSON like "
                     '{"name": "function_name", "arguments": {"arg": "value"}}. The functions:\n')


class Progress:
    """Shared with the UI thread: how far a run is."""

    def __init__(self) -> None:
        self.done = 0
        self.total = 0
        self.message = "starting"
        self._lock = threading.Lock()

    def update(self, done: int, total: int, message: str) -> None:
        with self._lock:
            self.done, self.total, self.message = done, total, message


def system_for(case: Case) -> str | None:
    """The case's system prompt, with its tools spelled out when it has any."""
    if not case.tools:
        return case.system
    tools = TOOLS_INSTRUCTION + "\n".join(json.dumps(t, ensure_ascii=False) for t in case.tools)
    return f"{case.system}\n\n{tools}" if case.system else tools


def select_cases(cases: list[Case], cfg: EvalConfig) -> list[Case]:
    if cfg.categories:
        cases = [c for c in cases if c.category in set(cfg.categories)]
    return across_categories(cases, cfg.limit) if cfg.limit else cases


def across_categories(cases: list[Case], limit: int) -> list[Case]:
    """`limit` cases taken in turn from each category (the first of each, then the second...), in suite
    order: a suite's first rows are often one category, and a short run should still cover them all."""
    by_category: dict[str, list[int]] = {}
    for position, case in enumerate(cases):
        by_category.setdefault(case.category, []).append(position)
    rounds = max((len(p) for p in by_category.values()), default=0)
    picked = [p[i] for i in range(rounds) for p in by_category.values() if i < len(p)][:limit]
    return [cases[i] for i in sorted(picked)]


def run_evaluation(engine: Engine, cfg: EvalConfig, data_dir: Path, judge=None, progress: Progress | None = None,
                   cancel: threading.Event | None = None) -> EvalRun:
    started = time.time()
    for variant in cfg.variants:
        engine.check_variant(variant)  # unknown or failed variants stop the run before any work
    loaded = load_suite(cfg.suite)
    cases = select_cases(loaded.cases, cfg)
    if not cases:
        raise ArenaError(f"{cfg.suite}: no case to run (check --categories / --limit)")
    run = EvalRun(cfg, loaded.name, [(p.line, p.reason) for p in loaded.problems],
                  notes=[(n.line, n.reason) for n in loaded.notes])
    paths = DataDir(data_dir)
    run.run_dir = paths.evaluation_run(loaded.name)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    store = AnswerStore(paths.eval_db)
    weights = {v: variant_fingerprint(engine, v) for v in cfg.variants}
    progress = progress or Progress()
    with JsonlAppender(run.run_dir / "answers.jsonl") as out:
        for number, case in enumerate(cases, 1):
            if cancel is not None and cancel.is_set():
                run.cancelled = True
                break
            progress.update(number - 1, len(cases), f"case {case.id}")
            for result in evaluate_case(engine, case, cfg, store, weights, judge, run, cancel):
                run.results.append(result)
                out.write(asdict(result))
    if judge is not None and not run.cancelled:
        progress.update(len(cases), len(cases), "judging Arena votes")
        run.vote_agreement = judge_vote_agreement(judge, Path(data_dir))
    run.ratings = people_ratings(cases, cfg.variants, Path(data_dir))
    progress.update(len(cases), len(cases), "cancelled" if run.cancelled else "done")
    run.seconds = time.time() - started
    return run


def evaluate_case(engine, case: Case, cfg: EvalConfig, store: AnswerStore, weights: dict, judge, run: EvalRun,
                  cancel) -> list[CaseResult]:
    """Every variant answers each turn of the case; a later turn follows the variant's own earlier answers."""
    params = cfg.params()
    system = system_for(case)
    conversations = {v: list(case.messages) for v in cfg.variants}
    results, answers = [], {}
    for turn in range(case.turns):
        if turn:
            for variant, conversation in conversations.items():
                conversation += [{"role": "assistant", "content": answers[variant][0]},
                                 {"role": "user", "content": case.followups[turn - 1]}]
        answers = answers_for(engine, case, turn, conversations, system, params, store, weights, cancel)
        if cancel is not None and cancel.is_set():
            break  # answers cut short by Stop are neither scored nor stored
        for variant, conversation in conversations.items():
            answer, reused = answers[variant]
            checks = [check_one(engine, variant, case, check, conversation, turn, answer, system, judge, run)
                      for check in case.checks]
            results.append(CaseResult(
                case_id=turn_id(case, turn), category=case.category, variant=variant,
                prompt=conversation[-1]["content"], answer=answer, passed=case_passed(checks),
                score=mean_score(checks), checks=[asdict(c) for c in checks], reused=reused, turn=turn + 1,
            ))
    return results


def answers_for(engine, case, turn, conversations, system, params, store, weights, cancel) -> dict[str, tuple[str, bool]]:
    """Stored answers where nothing changed; the rest generated together in one batched call."""
    variants = list(conversations)
    if all(check_type(check).scored_by == LIKELIHOOD for check in case.checks):
        return {v: ("", False) for v in variants}  # scored by log-likelihood, nothing to generate
    # Earlier answers follow from the weights, the case and the parameters, so these name a turn's answer.
    case_key = fingerprint(case.messages, system, case.tools, *case.followups[:turn])
    keys = {v: fingerprint(weights[v], case_key, params.to_dict()) for v in variants}
    found = {v: store.get(keys[v]) for v in variants}
    missing = [v for v in variants if found[v] is None]
    answers = {v: (found[v][0], True) for v in variants if found[v] is not None}
    if missing:
        requests = [ChatRequest(v, conversations[v], system, params) for v in missing]
        for answer in engine.answer_each(requests, cancel):
            answers[answer.variant] = (answer.text, False)
            if answer.stats.finish_reason != "cancelled":  # an answer cut short by Stop is never reused
                store.put(keys[answer.variant], answer.variant, turn_id(case, turn), answer.text, answer.stats.to_dict())
    return answers


def check_one(engine, variant, case, check, conversation, turn, answer, system, judge, run) -> CheckResult:
    scored_by = check_type(check).scored_by
    if scored_by == LIKELIHOOD and check["type"] == "preference":
        chosen, rejected = engine.loglikelihood(variant, case.messages, [check["chosen"], check["rejected"]], system=system)
        return score_preference(chosen.logprob, rejected.logprob)
    if scored_by == LIKELIHOOD:
        try:
            scored = engine.loglikelihood(variant, case.messages, check["choices"], system=system)
        except NotSupported as exc:  # e.g. a remote server without echo + logprobs: undecided, not wrong
            run.unsupported[str(exc)] = run.unsupported.get(str(exc), 0) + 1
            return CheckResult(check["type"], None, None, str(exc))
        return score_choice([c.logprob for c in scored], check["choices"], check["answer"])
    if scored_by == JUDGE:
        if judge is None:
            run.judge_skipped += 1
            return CheckResult(check["type"], None, None, "not graded: no judge given")
        return judge_check(judge, conversation, check, answer, turn_reference(case, check, turn), run)
    return run_check(check, answer, case)


def turn_reference(case: Case, check: dict, turn: int) -> str | None:
    """The judge's reference answer for this turn: the check's own for the first turn, else reference_turns."""
    if turn == 0 and check.get("reference"):
        return check["reference"]
    return case.reference_turns[turn] if turn < len(case.reference_turns) else None


def judge_instruction(conversation: list[dict]) -> str:
    """What the judge grades the answer against: the question, after the conversation so far."""
    if len(conversation) == 1:
        return conversation[0]["content"]
    earlier = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in conversation[:-1])
    return f"[Earlier in this conversation]\n{earlier}\n\n[The question to answer now]\n{conversation[-1]['content']}"


def judge_check(judge, conversation, check, answer, reference, run: EvalRun) -> CheckResult:
    from .judge import grade_absolute

    grade = grade_absolute(judge, instruction=judge_instruction(conversation), response=answer,
                           rubric=check["rubric"], reference=reference)
    run.judge_graded += 1
    if not grade.parsed:
        run.judge_unparsed += 1
        return CheckResult("judge", None, None, "the judge's verdict could not be parsed")
    threshold = check.get("threshold", 4)
    return CheckResult("judge", grade.score >= threshold, (grade.score - 1) / 4, f"{grade.score}/5: {grade.feedback[:300]}")


def judge_vote_agreement(judge, data_dir: Path, limit: int = 50) -> str:
    """The judge grades the latest decisive-or-tie Arena votes pairwise; '' when there are no votes."""
    from .judge import agreement_with_votes, grade_pairwise, vote_prompt
    from arena.votes import VoteStore

    path = DataDir(data_dir).votes_db
    if not path.is_file():
        return ""
    votes = [v for v in VoteStore(path).all() if v.mode == "arena"][-limit:]
    if not votes:
        return ""
    verdicts = {}
    for vote in votes:
        prompt = vote_prompt(vote.conversation_a)
        verdicts[(prompt, vote.variant_a, vote.variant_b)] = grade_pairwise(
            judge, prompt, vote.conversation_a[-1]["content"], vote.conversation_b[-1]["content"])
    return agreement_with_votes(verdicts, votes).summary()


def people_ratings(cases: list[Case], variants: list[str], data_dir: Path) -> list[dict]:
    """Mean 1-5 ratings (with intervals) people gave in Compare and Arena to answers to these cases' prompts."""
    from arena.ratings import RatingStore, rating_table, ratings_of_prompts

    path = DataDir(data_dir).ratings_db
    if not path.is_file():
        return []
    conversations = []
    for case in cases:
        asked = [m["content"] for m in case.messages if m["role"] == "user"]
        conversations += [asked + case.followups[:turn] for turn in range(case.turns)]
    found = ratings_of_prompts(RatingStore(path).all(), conversations)
    return rating_table(found, order=variants).to_dict("records") if found else []

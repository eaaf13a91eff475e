"""The preference view: on held-out pairs, how often each variant prefers the chosen answer to the rejected one.

For each pair (the Leaderboard's JSONL, a sharegpt file like dpo_en_demo.json, or a training job's
held-out pairs) every variant scores both answers through the engine's batched log-likelihood (each
row through its own adapter). A variant "prefers" the chosen answer when it gives it the higher
log-likelihood: the reward accuracy, with a 95% bootstrap interval, measured before any new vote.

Raw log-likelihoods favour the shorter answer, so the view also gives DPO's own measure against a
reference variant (the first one given: the base, or the adapter a DPO run started from): how often
a variant raised the chosen answer's log-likelihood more than the rejected one's, relative to the
reference. The results are ordinary evaluation rows, so the report's intervals, paired tests and
stage comparisons all apply.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from arena.export import PreferencePair, read_pairs_leniently
from kernel.files import JsonlAppender

from .checks import score_preference
from .report import bootstrap_interval, percent, plain
from .results import CaseResult, EvalConfig, EvalRun

CATEGORY = "preference"
PAIRS_PER_CALL = 8  # pairs scored per engine call: progress and Stop between calls


def looks_like_pairs(path: str | Path) -> bool:
    """Is this file preference pairs (chosen/rejected records) rather than a suite?"""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            head = handle.read(20000)
    except (OSError, UnicodeDecodeError):
        return False
    return '"chosen"' in head and '"rejected"' in head


def pair_messages(pair: PreferencePair) -> list[dict]:
    return pair.history + [{"role": "user", "content": pair.prompt}]


def run_preference(engine, cfg: EvalConfig, data_dir: Path, progress=None, cancel: threading.Event | None = None,
                   batch_size: int = 16) -> EvalRun:
    """Score every pair with every variant; `cfg.suite` is the pairs file, `cfg.limit` the first N pairs."""
    from models import ScoreRequest

    started = time.time()
    for variant in cfg.variants:
        engine.check_variant(variant)
    numbered, problems = read_pairs_leniently(cfg.suite)
    numbered = numbered[: cfg.limit] if cfg.limit else numbered
    run = EvalRun(cfg, f"preference pairs {Path(cfg.suite).name}", problems)
    run.run_dir = Path(data_dir) / "evaluations" / f"{time.strftime('%Y%m%d-%H%M%S')}-preference"
    run.run_dir.mkdir(parents=True, exist_ok=True)
    logprobs: dict[tuple[int, str], tuple[float, float]] = {}
    with JsonlAppender(run.run_dir / "answers.jsonl") as out:
        for start in range(0, len(numbered), PAIRS_PER_CALL):
            if cancel is not None and cancel.is_set():
                run.cancelled = True
                break
            if progress is not None:
                progress.update(start, len(numbered), f"pairs {start + 1}-{min(start + PAIRS_PER_CALL, len(numbered))}")
            chunk = numbered[start:start + PAIRS_PER_CALL]
            requests = [ScoreRequest(v, pair_messages(pair), answer) for _, pair in chunk for v in cfg.variants
                        for answer in (pair.chosen, pair.rejected)]
            scores = iter(engine.loglikelihood_batch(requests, batch_size=batch_size, cancel=cancel))
            for number, pair in chunk:
                for variant in cfg.variants:
                    chosen, rejected = next(scores).logprob, next(scores).logprob
                    logprobs[(number, variant)] = (chosen, rejected)
                    result = pair_result(number, pair, variant, chosen, rejected)
                    run.results.append(result)
                    out.write(asdict(result))
    if progress is not None:
        progress.update(len(numbered), len(numbered), "cancelled" if run.cancelled else "done")
    run.sections = summary_lines(logprobs, cfg.variants, len({n for n, _ in logprobs}))
    run.seconds = time.time() - started
    return run


def pair_result(number: int, pair: PreferencePair, variant: str, chosen: float, rejected: float) -> CaseResult:
    check = score_preference(chosen, rejected)
    return CaseResult(case_id=f"pair-{number}", category=CATEGORY, variant=variant, prompt=pair.prompt,
                      answer=check.detail, passed=check.passed, score=check.score, checks=[asdict(check)])


def summary_lines(logprobs: dict, variants: list[str], pairs: int) -> list[str]:
    """Markdown: per variant the reward accuracy and mean margin, then each variant against the reference."""
    if not pairs:
        return []
    numbers = sorted({n for n, _ in logprobs})
    margins = {v: np.array([logprobs[(n, v)][0] - logprobs[(n, v)][1] for n in numbers]) for v in variants}
    lines = [f"## Preference pairs ({pairs} held-out pairs)", "",
             "How often each variant gives the chosen answer a higher log-likelihood than the rejected one "
             "(95% bootstrap interval over pairs), and the mean margin log p(chosen) − log p(rejected).", "",
             "| variant | prefers the chosen answer (%) | mean margin |", "|---|---|---|"]
    for v in variants:
        low, high = bootstrap_interval((margins[v] > 0).astype(float))
        m_low, m_high = bootstrap_interval(margins[v])
        lines.append(f"| {plain(v)} | {percent(float((margins[v] > 0).mean()))} [{percent(low)}, {percent(high)}] | "
                     f"{margins[v].mean():+.2f} [{m_low:+.2f}, {m_high:+.2f}] |")
    reference = variants[0]
    if len(variants) > 1:
        lines += ["", f"Against the reference **{plain(reference)}** (DPO's reward accuracy: the variant raised the chosen "
                  "answer's log-likelihood more than the rejected one's, relative to the reference; length cancels out):",
                  "", "| variant | reward accuracy vs " + plain(reference) + " (%) | mean reward margin |", "|---|---|---|"]
        for v in variants[1:]:
            gain = margins[v] - margins[reference]
            low, high = bootstrap_interval((gain > 0).astype(float))
            g_low, g_high = bootstrap_interval(gain)
            lines.append(f"| {plain(v)} | {percent(float((gain > 0).mean()))} [{percent(low)}, {percent(high)}] | "
                         f"{gain.mean():+.2f} [{g_low:+.2f}, {g_high:+.2f}] |")
    return lines + [""]

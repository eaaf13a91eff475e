"""The before/after report: scores per category with 95% bootstrap intervals, paired tests against
the base (and, for successive stages of one fine-tune, each stage against the one before, to show
forgetting and recovery), a per-case table and a grouped bar chart, as Markdown, HTML and PNG.

Every text that comes from a suite, a model or a name (prompts, answers, categories, variants, the
suite's name) goes through `plain`, so it shows as text: the report is rendered with HTML allowed (for
its <details> block) in the Evaluate tab, and a suite must not be able to put a script there.
"""
from __future__ import annotations

import base64
import html
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kernel.files import atomic_write_text

ROUNDS = 1000
ALPHA = 0.05


def scored(results) -> pd.DataFrame:
    """One row per (case, variant) that could be decided: passed as 0/1."""
    rows = [{"case": r.case_id, "category": r.category, "turn": r.turn, "variant": r.variant,
             "passed": float(r.passed)} for r in results if r.passed is not None]
    return pd.DataFrame(rows, columns=["case", "category", "turn", "variant", "passed"])


def bootstrap_interval(values: np.ndarray, rounds: int = ROUNDS, seed: int = 0) -> tuple[float, float]:
    if len(values) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(rounds, len(values)), replace=True).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def group_scores(frame: pd.DataFrame, variants: list[str], key: str, groups: list) -> pd.DataFrame:
    """Pass rate per group (a `key` value, or "overall") and variant, with a 95% bootstrap interval over cases."""
    rows = []
    for group in groups:
        part = frame if group == "overall" else frame[frame[key] == group]
        for variant in variants:
            values = part[part["variant"] == variant]["passed"].to_numpy()
            low, high = bootstrap_interval(values)
            rows.append({key: group, "variant": variant, "cases": len(values),
                         "score": float(values.mean()) if len(values) else math.nan, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def category_scores(results, variants: list[str]) -> pd.DataFrame:
    frame = scored(results)
    return group_scores(frame, variants, "category", sorted(frame["category"].unique()) + ["overall"])


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test on the discordant pairs (b: only the base passed, c: only the adapter)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def verdict(diff: float, p: float) -> str:
    if math.isnan(diff):
        return "no paired cases"
    if p < ALPHA:
        return f"significantly {'better' if diff > 0 else 'worse'} ({diff * 100:+.1f} points, p={p:.3f})"
    return f"no significant change ({diff * 100:+.1f} points, p={p:.2f})"


def against_base(variants: list[str], base: str = "base") -> list[tuple[str, str]]:
    return [(base, v) for v in variants if v != base] if base in variants else []


def stage_steps(variants: list[str]) -> list[tuple[str, str]]:
    """Successive stages of one fine-tune (trained on A, then on A+B, ...): each against the one before."""
    return list(zip(variants, variants[1:]))


def paired_differences(results, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """`after` against `before` on the same cases, per pair: paired bootstrap interval and McNemar's test."""
    frame = scored(results)
    if frame.empty or not pairs:
        return pd.DataFrame()
    wide = frame.pivot_table(index=["case", "category"], columns="variant", values="passed").reset_index()
    rows = []
    for before, after in pairs:
        if before not in wide or after not in wide:
            continue
        for category in sorted(wide["category"].unique()) + ["overall"]:
            part = wide if category == "overall" else wide[wide["category"] == category]
            pairs_ = part[[before, after]].dropna()
            diffs = (pairs_[after] - pairs_[before]).to_numpy()
            b = int(((pairs_[before] == 1) & (pairs_[after] == 0)).sum())
            c = int(((pairs_[before] == 0) & (pairs_[after] == 1)).sum())
            low, high = bootstrap_interval(diffs)
            diff = float(diffs.mean()) if len(diffs) else math.nan
            p = mcnemar_exact(b, c)
            rows.append({"before": before, "after": after, "category": category, "pairs": len(diffs),
                         "difference": diff, "ci_low": low, "ci_high": high, "only_before_passed": b,
                         "only_after_passed": c, "p_value": p, "verdict": verdict(diff, p)})
    return pd.DataFrame(rows)


def forgetting_lines(steps: pd.DataFrame) -> list[str]:
    """Plain sentences for each category a stage significantly lost, and any later stage that won it back."""
    if steps.empty:
        return []
    lines = []
    significant = steps[(steps["p_value"] < ALPHA) & (steps["category"] != "overall")]
    for _, lost in significant[significant["difference"] < 0].iterrows():
        line = (f"- **Forgetting**: {plain(lost['category'])} fell {lost['difference'] * 100:+.1f} points "
                f"from {plain(lost['before'])} to {plain(lost['after'])} (p={lost['p_value']:.3f}).")
        later = significant[(significant["category"] == lost["category"]) & (significant["difference"] > 0)
                            & (significant.index > lost.name)]
        if not later.empty:
            back = later.iloc[0]
            line += f" **Recovered** by {plain(back['after'])} ({back['difference'] * 100:+.1f} points, p={back['p_value']:.3f})."
        lines.append(line)
    return lines or ["- No category fell significantly from one stage to the next."]


def differences_table(title: str, diffs: pd.DataFrame) -> list[str]:
    lines = [title, "", "| before → after | category | difference (points) | 95% interval | McNemar p | verdict |",
             "|---|---|---|---|---|---|"]
    for _, d in diffs.iterrows():
        lines.append(f"| {plain(d['before'])} → {plain(d['after'])} | {plain(d['category'])} | {d['difference'] * 100:+.1f} | "
                     f"[{d['ci_low'] * 100:+.1f}, {d['ci_high'] * 100:+.1f}] | {d['p_value']:.3f} | {d['verdict']} |")
    return lines + [""]


def bar_chart(scores: pd.DataFrame, path: Path, title: str) -> Path:
    """Grouped bars: categories along x, one bar per variant, with the 95% interval as error bars."""
    categories = list(dict.fromkeys(scores["category"]))
    variants = list(dict.fromkeys(scores["variant"]))
    figure = Figure(figsize=(max(6, 1.2 * len(categories) * max(1, len(variants)) / 2), 4.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        part = scores[scores["variant"] == variant].set_index("category").reindex(categories)
        x = np.arange(len(categories)) + (i - (len(variants) - 1) / 2) * width
        errors = np.array([(part["score"] - part["ci_low"]).clip(lower=0), (part["ci_high"] - part["score"]).clip(lower=0)])
        axes.bar(x, part["score"] * 100, width, yerr=np.nan_to_num(errors) * 100, capsize=3, label=variant)
    axes.set_xticks(np.arange(len(categories)), categories, rotation=30, ha="right")
    axes.set_ylabel("cases passed (%)")
    axes.set_ylim(0, 105)
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png", dpi=110)
    tmp.replace(path)
    return path


MARKDOWN_SPECIAL = str.maketrans({"\\": "\\\\", "|": "\\|", "[": "\\[", "]": "\\]", "`": "\\`"})


def plain(value) -> str:
    """Any text as inert Markdown and HTML: one line, no tags, no links or images, no table breaks."""
    text = " ".join(str(value if value is not None else "").split())
    return html.escape(text, quote=False).translate(MARKDOWN_SPECIAL)


def short(text: str, limit: int = 90) -> str:
    text = " ".join((text or "").split())
    return plain(text if len(text) <= limit else text[: limit - 1] + "…")


def percent(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x * 100:.1f}"


def markdown_report(run, scores: pd.DataFrame, diffs: pd.DataFrame, steps: pd.DataFrame, chart_name: str) -> str:
    variants = run.config.variants
    names = [plain(v) for v in variants]
    cases = len({r.case_id for r in run.results if r.turn == 1})
    turns = len({r.case_id for r in run.results})
    reused = sum(r.reused for r in run.results)
    how = (f"Answers read from {plain(run.answers_from)}, scored without a model." if run.answers_from else
           (f"Log-likelihoods of each pair's answers, nothing generated. {run.seconds:.0f} s." if run.sections else
            f"Greedy, max {run.config.max_new_tokens} new tokens. {run.seconds:.0f} s.")
           + (f" Reused stored answers: {reused} (same weights, case and settings)." if reused else ""))
    lines = [f"# Evaluation: {plain(run.suite_name)}", "",
             f"Variants: {', '.join(names)}. Cases: {cases}" + (f" ({turns} turns)" if turns > cases else "") + ". "
             + how + (" **Cancelled before the end.**" if run.cancelled else ""), ""]
    if run.problems:
        lines += [f"{len(run.problems)} malformed case(s) skipped: "
                  + "; ".join(f"line {n}: {short(why, 200)}" for n, why in run.problems[:10]), ""]
    if run.notes:
        lines += [f"{len(run.notes)} note(s) on the suite: "
                  + "; ".join(f"line {n}: {short(why, 200)}" for n, why in run.notes[:10]), ""]
    lines += run.sections
    lines += check_lines(run.results)
    if run.judge_graded:
        lines += [f"Judge: {run.judge_graded} grades, {run.judge_unparsed} unparseable after retries (counted as undecided).", ""]
    if run.judge_skipped:
        lines += [f"{run.judge_skipped} judged check(s) not graded: no judge was given (run with --judge to grade them); "
                  "cases with only judged checks are left out of the scores.", ""]
    for reason, count in run.unsupported.items():
        lines += [f"{count} check(s) not scored, {reason}; cases with only such checks are left out of the scores.", ""]
    if run.vote_agreement:
        lines += [f"Agreement with Arena votes: {run.vote_agreement}.", ""]
    lines += ["## Score per category (% of cases passed, 95% bootstrap interval)", "",
              "| category | " + " | ".join(names) + " |", "|---" * (len(variants) + 1) + "|"]
    for category in dict.fromkeys(scores["category"]):
        part = scores[scores["category"] == category].set_index("variant")
        cells = [f"{percent(part.loc[v, 'score'])} [{percent(part.loc[v, 'ci_low'])}, {percent(part.loc[v, 'ci_high'])}]"
                 for v in variants]
        lines.append(f"| {'**overall**' if category == 'overall' else plain(category)} (n={int(part['cases'].max())}) | "
                     + " | ".join(cells) + " |")
    lines += ["", f"![scores per category]({chart_name})", ""]
    lines += turn_table(run.results, variants)
    if not diffs.empty:
        lines += differences_table("## Each adapter against the base (paired, same cases)", diffs)
    if not steps.empty:
        later = steps[steps["before"] != "base"]  # base → first stage is already in the table above
        if not later.empty:
            lines += differences_table("## Stage by stage (each variant against the one before it)", later)
        lines += ["## Forgetting and recovery across the stages", "", *forgetting_lines(steps), ""]
    lines += ratings_table(run.ratings)
    lines += per_case_table(run)
    return "\n".join(lines) + "\n"


def ratings_table(ratings: list[dict]) -> list[str]:
    """People's 1-5 ratings (Compare and Arena) of answers to this suite's own prompts, when there are any."""
    if not ratings:
        return []
    lines = ["## People's ratings of these prompts (1 to 5, from Compare and Arena)", "",
             "| variant | mean | 95% interval | ratings |", "|---|---|---|---|"]
    for r in ratings:
        lines.append(f"| {plain(r['variant'])} | {r['mean']:.2f} | [{r['ci_low']:.2f}, {r['ci_high']:.2f}] "
                     f"| {r['ratings']} |")
    return lines + [""]


def check_lines(results) -> list[str]:
    """How numeric checks were scored (lm-eval's modes or the lenient one), and which checks were not scored."""
    numeric, unscored = Counter(), {}
    for r in results:
        for check in r.checks:
            if check["type"] == "numeric":
                numeric[check["detail"].split(":", 1)[0]] += 1
            if check["detail"].startswith("not scored"):
                unscored.setdefault(check["type"], []).append(r.case_id)
    lines = []
    if numeric:
        lines += ["Numeric checks scored in mode " + ", ".join(f"{mode} ({n})" for mode, n in numeric.items()) + ".", ""]
    for kind, cases in unscored.items():
        shown = ", ".join(plain(c) for c in list(dict.fromkeys(cases))[:5]) + (", ..." if len(set(cases)) > 5 else "")
        lines += [f"Not scored: {len(cases)} {kind} check(s) ({shown}): they need the model; `run` scores them.", ""]
    return lines


def turn_table(results, variants: list[str]) -> list[str]:
    """For multi-turn suites (MT-bench): the score of each turn, since follow-ups are often much harder."""
    if not any(r.turn > 1 for r in results):
        return []
    turns = sorted({r.turn for r in results})
    scores = group_scores(scored(results), variants, "turn", turns)
    lines = ["## Score per turn (% passed, 95% bootstrap interval)", "",
             "| turn | " + " | ".join(plain(v) for v in variants) + " |", "|---" * (len(variants) + 1) + "|"]
    for turn in turns:
        part = scores[scores["turn"] == turn].set_index("variant")
        cells = [f"{percent(part.loc[v, 'score'])} [{percent(part.loc[v, 'ci_low'])}, {percent(part.loc[v, 'ci_high'])}] "
                 f"(n={part.loc[v, 'cases']})" for v in variants]
        lines.append(f"| {turn} | " + " | ".join(cells) + " |")
    return lines + [""]


def per_case_table(run) -> list[str]:
    variants = run.config.variants
    by_case: dict[str, dict] = {}
    for r in run.results:
        by_case.setdefault(r.case_id, {"category": r.category, "prompt": r.prompt})[r.variant] = r
    mark = {True: "✓", False: "✗", None: "?"}
    lines = ["## Per case, before and after", "", "<details><summary>All cases</summary>", "",
             "| case | category | prompt | " + " | ".join(plain(v) for v in variants) + " |",
             "|---" * (len(variants) + 3) + "|"]
    for case_id, row in by_case.items():
        cells = []
        for v in variants:
            r = row.get(v)
            cells.append(f"{mark[r.passed]} {short(r.answer or (r.checks[0]['detail'] if r.checks else ''), 70)}" if r else "")
        lines.append(f"| {plain(case_id)} | {plain(row['category'])} | {short(row['prompt'], 60)} | "
                     + " | ".join(cells) + " |")
    return lines + ["", "</details>", ""]


def write_report(run, path: Path | None = None) -> dict[str, Path]:
    """Write report.md, report.html and chart.png (into the run folder, and to `path` if given)."""
    variants = run.config.variants
    scores = category_scores(run.results, variants)
    diffs = paired_differences(run.results, against_base(variants))
    steps = paired_differences(run.results, stage_steps(variants)) if run.config.stages else pd.DataFrame()
    target = Path(path) if path else run.run_dir / "report.md"
    chart = bar_chart(scores, target.with_suffix(".png"), f"{run.suite_name}: cases passed per category")
    markdown = markdown_report(run, scores, diffs, steps, chart.name)
    atomic_write_text(target, markdown)
    # The HTML carries the chart inside it, so it reads the same in the app and as a downloaded file.
    inline = "data:image/png;base64," + base64.b64encode(chart.read_bytes()).decode()
    page = to_html(markdown.replace(f"]({chart.name})", f"]({inline})"))
    html_path = target.with_suffix(".html")
    atomic_write_text(html_path, page)
    scores_path = target.with_name(target.stem + "-scores.csv")
    scores.to_csv(scores_path, index=False)
    return {"markdown": target, "html": html_path, "chart": chart, "scores": scores_path}


def to_html(markdown: str) -> str:
    """Markdown to HTML with the renderer gradio already ships (markdown-it)."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)
    return f"<!doctype html><meta charset='utf-8'><title>Evaluation report</title>{body}"


"""`python -m evaluation`: before/after evaluation runs and teacher-made datasets.

    python -m evaluation run --suite evaluation/suites/starter.jsonl --variants base,ahoy --report report.md
    python -m evaluation run --suite evaluation/suites/mt_bench.jsonl --variants base,ahoy --judge base
    python -m evaluation preference --pairs heldout.jsonl --variants base,ahoy,ahoy-dpo --report pref.md
    python -m evaluation generate-data --input reviews.csv --field text --template review_replies \\
        --teacher http://localhost:8000/v1?model=qwen --output replies.json
    python -m evaluation score --suite suite.jsonl --answers answers.jsonl --verdicts verdicts.jsonl --report r.md
    python -m evaluation import bfcl BFCL_v4_simple_python.json possible_answer/BFCL_v4_simple_python.json -o bfcl.jsonl
    python -m evaluation import gsm8k test.jsonl -o gsm8k.jsonl [--mode lm-eval-strict]

`score` and `import` load no model.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from kernel.cli import EXIT_PARTIAL, Parser, add_engine_args, engine_config_from_args, quiet_libraries, run_command
from kernel.errors import ArenaError

from .numbers import LM_EVAL_FLEXIBLE, MODES

quiet_libraries()  # before any command imports transformers

PROG = "python -m evaluation"


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run variants over a suite and write a report")
    run.add_argument("--suite", required=True, help="JSONL suite (see evaluation/suites/)")
    run.add_argument("--variants", default="base", help="comma-separated: base and adapter names")
    run.add_argument("--judge", default=None, help="a variant name or an OpenAI-compatible URL (http://host/v1?model=NAME)")
    run.add_argument("--report", default=None, help="Markdown report path (default: in the run folder)")
    run.add_argument("--max-new-tokens", type=int, default=256)
    run.add_argument("--limit", type=int, default=None, help="only N cases, taken in turn from each category")
    run.add_argument("--categories", default=None, help="comma-separated categories to run")
    run.add_argument("--stages", action="store_true",
                     help="the variants are successive stages of one fine-tune, in training order: also compare "
                          "each with the one before it and name the categories it forgot or won back")
    add_engine_args(run)
    pref = commands.add_parser("preference", help="how often each variant prefers the chosen answer of held-out pairs")
    pref.add_argument("--pairs", required=True, help="preference pairs: the Leaderboard's JSONL or a sharegpt JSON file")
    pref.add_argument("--variants", default="base", help="comma-separated; the first is the reference (base, or the "
                                                         "adapter a DPO run started from)")
    pref.add_argument("--report", default=None, help="Markdown report path (default: in the run folder)")
    pref.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    pref.add_argument("--batch-size", type=int, default=16, help="rows per forward pass")
    pref.add_argument("--stages", action="store_true", help="as for run: each variant against the one before it")
    add_engine_args(pref)
    gen = commands.add_parser("generate-data", help="make an instruction dataset with a teacher model")
    gen.add_argument("--input", required=True,
                     help="CSV, JSON/JSONL (the text in --field) or a text file, one text per line")
    gen.add_argument("--field", default="text", help="the column or key holding the text")
    gen.add_argument("--template", default="qa_pairs",
                     help="review_replies, qa_pairs, instruction, or a .json/.yaml file with prompt and fields")
    gen.add_argument("--teacher", required=True,
                     help="a variant of the loaded engine, or an OpenAI-compatible URL (http://host/v1?model=NAME)")
    gen.add_argument("--output", required=True, help="JSON file in alpaca format, for the Training tab")
    gen.add_argument("--max-retries", type=int, default=2, help="re-asks per text after an invalid answer")
    gen.add_argument("--dedupe-threshold", type=float, default=0.7, help="drop outputs this ROUGE-L close to a kept one")
    gen.add_argument("--limit", type=int, default=None, help="only the first N inputs")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_engine_args(gen)
    score = commands.add_parser("score", help="score answers produced elsewhere against a suite (no model)")
    score.add_argument("--suite", required=True, help="JSONL suite")
    score.add_argument("--answers", required=True, help='JSONL, one {"id", "variant", "answer"} a line')
    score.add_argument("--verdicts", required=True, help='JSONL written: one {"id", "variant", "passed", "detail"} a line')
    score.add_argument("--report", default=None, help="Markdown report path (default: beside the verdicts)")
    imports = commands.add_parser("import", help="make a suite from a published benchmark's files")
    sources = imports.add_subparsers(dest="source", required=True)
    bfcl = sources.add_parser("bfcl", help="BFCL questions + possible answers (single-turn categories)")
    bfcl.add_argument("questions", help="e.g. BFCL_v4_simple_python.json")
    bfcl.add_argument("possible_answers", help="e.g. possible_answer/BFCL_v4_simple_python.json")
    gsm8k = sources.add_parser("gsm8k", help="GSM8K test.jsonl ({question, answer ending in '#### N'})")
    gsm8k.add_argument("test", help="GSM8K's test.jsonl")
    gsm8k.add_argument("--mode", choices=MODES, default=LM_EVAL_FLEXIBLE, help="how the numeric checks read answers")
    for source in (bfcl, gsm8k):
        source.add_argument("-o", "--output", required=True, help="suite JSONL to write")
    return parser.parse_args(argv)


def load_engine(args):
    """Only `run`, `preference` and `generate-data` with a local teacher need the model (and torch); `score` and `import` do not."""
    from models import Engine

    return Engine.load(engine_config_from_args(args))


def command_run(args) -> None:
    from .judge import judge_from_spec
    from .report import write_report
    from .runner import EvalConfig

    cfg = EvalConfig(suite=args.suite, variants=[v.strip() for v in args.variants.split(",") if v.strip()],
                     judge=args.judge, max_new_tokens=args.max_new_tokens, limit=args.limit,
                     categories=args.categories.split(",") if args.categories else None, stages=args.stages)
    if args.report and os.path.isdir(args.report):
        raise ArenaError(f"--report {args.report} is a folder: give a file name")
    engine = load_engine(args)
    judge = judge_from_spec(args.judge, engine) if args.judge else None
    run = run_with_progress_bar(engine, cfg, judge)
    paths = write_report(run, args.report)
    print(open(paths["markdown"], encoding="utf-8").read().split("## Per case")[0])
    print(f"report: {paths['markdown']} (and {paths['html'].name}, {paths['chart'].name}); answers: {run.run_dir / 'answers.jsonl'}")


def command_preference(args) -> None:
    from .preference import run_preference
    from .report import write_report
    from .runner import EvalConfig

    cfg = EvalConfig(suite=args.pairs, variants=[v.strip() for v in args.variants.split(",") if v.strip()],
                     limit=args.limit, stages=args.stages)
    engine = load_engine(args)
    run = run_with_progress_bar(engine, cfg, None, lambda engine, cfg, data_dir, judge, progress: run_preference(
        engine, cfg, data_dir, progress=progress, batch_size=args.batch_size))
    paths = write_report(run, args.report)
    print(paths["markdown"].read_text(encoding="utf-8").split("## Per case")[0])
    print(f"report: {paths['markdown']} (and {paths['html'].name}, {paths['chart'].name})")


def run_with_progress_bar(engine, cfg, judge, run_function=None):
    from tqdm import tqdm

    from .runner import Progress, run_evaluation

    progress, result = Progress(), {}
    work = run_function or run_evaluation
    worker = threading.Thread(target=lambda: result.update(run=_capture(work, engine, cfg,
                                                                        engine.config.data_dir, judge, progress)))
    worker.start()
    live = sys.stderr.isatty()  # into a log file, one line per finished case rather than one per 0.5 s
    with tqdm(total=0, unit="case", file=sys.stderr, desc="evaluating") as bar:
        while worker.is_alive():
            worker.join(0.5)
            if live or (progress.done, progress.total) != (bar.n, bar.total):
                bar.total = progress.total
                bar.n = progress.done
                bar.refresh()
    outcome = result["run"]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _capture(fn, *args):
    try:
        return fn(*args)
    except BaseException as exc:  # re-raised in the main thread
        return exc


def command_generate(args) -> int:
    """Exit 1 when the teacher stopped answering before the end: run it again to go on where it stopped."""
    from .generate_data import generate_data
    from .judge import judge_from_spec

    local_teacher = not args.teacher.startswith(("http://", "https://"))
    engine = load_engine(args) if local_teacher else None
    report = generate_data(args.input, args.field, args.template, judge_from_spec(args.teacher, engine),
                           args.output, max_retries=args.max_retries, dedupe_threshold=args.dedupe_threshold,
                           limit=args.limit, progress=not args.no_progress)
    print(report.summary())
    return EXIT_PARTIAL if report.stopped else 0


def command_score(args) -> None:
    from .report import write_report
    from .scoring import score_answers, write_verdicts

    run = score_answers(args.suite, args.answers)
    write_verdicts(run, args.verdicts)
    report = Path(args.report) if args.report else Path(args.verdicts).with_suffix(".md")
    paths = write_report(run, report)
    print(paths["markdown"].read_text(encoding="utf-8").split("## Per case")[0])
    print(f"verdicts: {args.verdicts}; report: {paths['markdown']} (and {paths['html'].name}, {paths['chart'].name})")


def command_import(args) -> None:
    from .importers import import_bfcl, import_gsm8k, write_suite

    if args.source == "bfcl":
        imported = import_bfcl(Path(args.questions), Path(args.possible_answers))
    else:
        imported = import_gsm8k(Path(args.test), args.mode)
    write_suite(imported, Path(args.output))
    print(imported.summary(Path(args.output)))


def main(argv=None) -> int:
    args = parse_args(argv)
    command = {"run": command_run, "preference": command_preference, "generate-data": command_generate,
               "score": command_score, "import": command_import}[args.command]
    return run_command(lambda: command(args), interrupted="interrupted: stored answers are reused when you run it again")


if __name__ == "__main__":
    sys.exit(main())

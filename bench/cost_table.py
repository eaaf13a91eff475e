"""The cost of LoRA, measured: one table of what each way of fine-tuning took and what it gave.

The Ahoy example (training/examples/ahoy_demo.json) with the Training tab's Quick CPU demo preset on the
default model, trained one job after another as LoRA r=8/16/64, rsLoRA, DoRA, QLoRA and a full
fine-tune, then every result scored on training/examples/ahoy_stages_suite.jsonl (20 Ahoy-style cases,
30 factual) with `python -m evaluation run`. Every figure comes from the jobs' own cards.

    python bench/cost_table.py --data-dir /tmp/cost-data     # 18 min of training on two idle cores, then the scoring
    python bench/cost_table.py --data-dir /tmp/cost-data     # again: finished jobs are kept, only the table is redone

Writes bench/results/cost-<device>-<model>.json and .md. The README's table is this output.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.bench_engine import write_json  # noqa: E402
from kernel.config import resolve_data_dir  # noqa: E402
from kernel.files import atomic_write_text  # noqa: E402
from models.base import resolve_base  # noqa: E402
from training.config import QUICK_CPU_DEMO, TrainConfig  # noqa: E402  the preset the README's walkthrough uses
from training.cost import cost_markdown, read_card  # noqa: E402

DATASET = REPO / "training" / "examples" / "ahoy_demo.json"
SUITE = REPO / "training" / "examples" / "ahoy_stages_suite.jsonl"
MAX_NEW_TOKENS = 48  # as in the stages walkthrough: long enough for "Ahoy!" and a fact
# name -> what differs from the preset (LoRA r=16, alpha 32 on q/k/v/o, lr 1e-3, 5 epochs, batch 4, max length 256)
JOBS = {
    "cost-lora-r8": dict(rank=8, alpha=16),  # alpha = 2r throughout: the same LoRA scale at every rank
    "cost-lora-r16": dict(),
    "cost-lora-r64": dict(rank=64, alpha=128),
    "cost-rslora-r16": dict(method="rslora"),
    "cost-dora-r16": dict(method="dora"),
    "cost-qlora-r16": dict(method="qlora"),
    # Every weight moves: 1e-3 would wreck the model, so the usual full fine-tuning rate instead.
    "cost-full": dict(method="full", learning_rate=5e-5),
}
SCORES = {"ahoy_style": "Ahoy style %", "factual": "factual %"}


def run(command: list[str], log: Path) -> None:
    """One step at a time, its output into a log file; stop at the first failure, naming the log."""
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        done = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}; see {log}")


def result_folder(data: Path, name: str) -> Path:
    return data / ("models" if JOBS[name].get("method") == "full" else "adapters") / name


def train_all(data: Path, base: str, log: Path) -> dict[str, list]:
    load = {}
    for name, changes in JOBS.items():
        if read_card(result_folder(data, name)) is not None:
            continue  # finished in an earlier run of this script
        cfg = TrainConfig(name=name, dataset=str(DATASET), base=base, **{**QUICK_CPU_DEMO, **changes})
        before = os.getloadavg()
        print(f"training {name} ...", file=sys.stderr, flush=True)
        job_file = data / "cost-jobs" / f"{name}.yaml"  # a job file, as the Training tab saves one
        job_file.parent.mkdir(parents=True, exist_ok=True)
        cfg.save(job_file)
        run([sys.executable, "-m", "training", "--data-dir", str(data), "--config", str(job_file)], log)
        load[name] = [before[0], os.getloadavg()[0]]
    return load


def evaluate(data: Path, base: str, variants: list[str], report: Path, log: Path) -> dict[str, dict]:
    """variant -> {category: % passed}, from the report's scores CSV."""
    scores_csv = report.with_name(report.stem + "-scores.csv")
    if not scores_csv.is_file():
        print(f"evaluating {', '.join(variants)} on {Path(base).name} ...", file=sys.stderr, flush=True)
        run([sys.executable, "-m", "evaluation", "run", "--suite", str(SUITE), "--variants", ",".join(variants),
             "--max-new-tokens", str(MAX_NEW_TOKENS), "--data-dir", str(data), "--base", base,
             "--report", str(report)], log)
    scores: dict[str, dict] = {}
    with open(scores_csv, encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            scores.setdefault(row["variant"], {})[row["category"]] = round(100 * float(row["score"]), 1)
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True, help="where the jobs, adapters and the full model go")
    ap.add_argument("--output", type=Path, help="JSON path (default bench/results/cost-<device>-<model>.json)")
    args = ap.parse_args()
    data = resolve_data_dir(args.data_dir)
    _, base = resolve_base("default", resolve_data_dir() / "models")  # the converted default, made once
    log = data / "cost_table.log"
    started, load_start = time.time(), os.getloadavg()
    load_per_job = train_all(data, base, log)
    adapters = [name for name in JOBS if JOBS[name].get("method") != "full"]
    scores = evaluate(data, base, ["base", *adapters], data / "cost-eval" / "adapters.md", log)
    scores["cost-full"] = evaluate(data, "cost-full", ["base"], data / "cost-eval" / "full.md", log)["base"]
    cards = {name: read_card(result_folder(data, name)) for name in JOBS}
    quality = {name: {label: f"{scores[name].get(key, float('nan')):.1f}" for key, label in SCORES.items()}
               for name in JOBS}
    base_scores = ", ".join(f"{label} {scores['base'].get(key, float('nan')):.1f}" for key, label in SCORES.items())
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    meta = {"dataset": DATASET.name, "suite": SUITE.name, "preset": QUICK_CPU_DEMO, "changes": JOBS,
            "max_new_tokens": MAX_NEW_TOKENS, "device": device, "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "minutes": round((time.time() - started) / 60, 1),
            "load_average_start": load_start, "load_average_end": os.getloadavg(),
            "load_average_per_job": load_per_job, "base_scores": scores["base"]}
    table = cost_markdown(cards, quality)
    text = (f"Base model without training: {base_scores}. Trained on {os.cpu_count()} CPU cores, one job after "
            f"another; load average {load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end.\n\n{table}\n")
    out = args.output or REPO / "bench" / "results" / f"cost-{device}-smollm2-135m-instruct.json"
    write_json(out, {"meta": meta, "cards": cards, "scores": scores})
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()

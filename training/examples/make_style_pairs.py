"""Make the "Fair winds" preference pairs: a style rule that neither the base nor the Ahoy adapter follows.

    python -m training --dataset training/examples/ahoy_demo.json --name ahoy --learning-rate 1e-3 --epochs 5 --max-length 256
    python training/examples/make_style_pairs.py --adapter ahoy

For each prompt (instructions without an input field from shared/data/alpaca_en_demo.json, seed 0) the
adapter answers greedily. The rejected answer is that answer as it came (cut at its last full sentence
when it ran out of tokens); the chosen answer is the same text signed off with "Fair winds!" before the
anchor. The two differ only in the rule, so a DPO run on top of the adapter learns the rule, and the
answers stay the adapter's own (on-policy). Writes, beside this script:
  fair_winds_pairs.json            the training pairs (the Leaderboard's flat form, as a JSON array)
  fair_winds_heldout_pairs.jsonl   held-out pairs, for `python -m evaluation preference`
  fair_winds_suite.jsonl           the held-out prompts as a suite (does the answer say "Fair winds!"?)
                                   plus factual questions from evaluation/suites/starter.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

RULE = "Fair winds!"
SENTENCE_END = re.compile(r"[.!?⚓](?=\s|$)")


def prompts(alpaca: Path, count: int, seed: int = 0) -> list[str]:
    rows = json.loads(alpaca.read_text(encoding="utf-8"))
    ahoy = {r["instruction"] for r in json.loads((HERE / "ahoy_demo.json").read_text(encoding="utf-8"))}
    found = list(dict.fromkeys(r["instruction"].strip() for r in rows
                               if not r["input"].strip() and len(r["instruction"]) < 120 and r["instruction"] not in ahoy))
    random.Random(seed).shuffle(found)
    return found[:count]


def whole_sentences(text: str, finished: bool) -> str:
    """The answer up to its last full sentence when generation stopped at the token limit."""
    text = text.strip()
    if finished:
        return text
    ends = [m.end() for m in SENTENCE_END.finditer(text)]
    return text[:ends[-1]] if ends else ""


def signed(answer: str) -> str:
    """The same answer with the rule: "Fair winds!" before the closing anchor (added when it has none)."""
    body = answer.removesuffix("⚓").rstrip()
    return f"{body} {RULE} ⚓"


def shared_data() -> Path:
    """The public datasets: $ARENA_SHARED_DATA, else ../shared/data beside the checkout, else /work/shared/data."""
    candidates = [os.environ.get("ARENA_SHARED_DATA"), REPO.parent / "shared" / "data", "/work/shared/data"]
    return next((Path(c) for c in candidates if c and Path(c).is_dir()), REPO.parent / "shared" / "data")


def main(argv=None) -> int:
    from models import ChatRequest, Engine, EngineConfig, SamplingParams

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", default="ahoy", help="the adapter whose own answers make the pairs")
    parser.add_argument("--train", type=int, default=220)
    parser.add_argument("--heldout", type=int, default=40)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--alpaca", default=None, help="default: alpaca_en_demo.json of the shared public data")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    if args.alpaca is None:
        args.alpaca = str(shared_data() / "alpaca_en_demo.json")
    engine = Engine.load(EngineConfig(**({"data_dir": Path(args.data_dir)} if args.data_dir else {})))
    engine.check_variant(args.adapter)
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    pairs = []
    todo = prompts(Path(args.alpaca), (args.train + args.heldout) * 2)
    for start in range(0, len(todo), 32):
        if len(pairs) >= args.train + args.heldout:
            break
        batch = todo[start:start + 32]
        answers = engine.answer_each([ChatRequest(args.adapter, p, params=params) for p in batch])
        for prompt, answer in zip(batch, answers):
            rejected = whole_sentences(answer.text, answer.stats.finish_reason == "stop")
            if rejected and RULE not in rejected:
                pairs.append({"prompt": prompt, "chosen": signed(rejected), "rejected": rejected, "history": []})
        print(f"{len(pairs)} pairs from {start + len(batch)} prompts", flush=True)
    train, heldout = pairs[:args.train], pairs[args.train:args.train + args.heldout]
    (HERE / "fair_winds_pairs.json").write_text(json.dumps(train, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    (HERE / "fair_winds_heldout_pairs.jsonl").write_text(
        "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in heldout), encoding="utf-8")
    write_suite(heldout, HERE / "fair_winds_suite.jsonl")
    print(f"{len(train)} training pairs, {len(heldout)} held out")
    return 0


def write_suite(heldout: list[dict], path: Path) -> None:
    """Held-out prompts checked for the rule, and the factual questions of the Ahoy stages suite (forgetting)."""
    style = [{"id": f"rule-{n}", "category": "fair_winds", "prompt": p["prompt"],
              "check": {"type": "contains", "value": RULE, "ignore_case": False}} for n, p in enumerate(heldout, 1)]
    factual = [json.loads(line) for line in (HERE / "ahoy_stages_suite.jsonl").read_text(encoding="utf-8").splitlines()
               if '"factual"' in line]
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in style + factual), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())

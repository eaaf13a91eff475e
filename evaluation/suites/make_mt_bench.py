"""Build evaluation/suites/mt_bench.jsonl from the MT-bench files in the shared data folder.

MT-bench (lm-sys/FastChat, Apache-2.0): 80 two-turn questions in 8 categories, with GPT-4 reference
answers for the math, reasoning and coding questions. Each question becomes one judged case:

    {"id": "mt-81", "category": "writing", "prompt": <first turn>, "turns": [<turn 1>, <turn 2>],
     "check": {"type": "judge", "rubric": {...}, "threshold": 4, "reference": <GPT-4 first-turn answer>},
     "reference_turns": [<GPT-4 answer to turn 1>, <to turn 2>]}

`reference` and `reference_turns` are present only where the reference file has that question.

    python evaluation/suites/make_mt_bench.py [--data-dir DIR] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
QUESTIONS = "mt_bench_question.jsonl"
REFERENCES = "mt_bench_reference_gpt4.jsonl"

RUBRIC = {
    "criteria": "How helpful, relevant, accurate and detailed is the response?",
    "score1_description": "The response is unhelpful: it is off-topic, wrong, refuses without reason, or is incoherent.",
    "score2_description": "The response addresses the request only partly, with major errors or omissions, or ignores key instructions.",
    "score3_description": "The response is relevant and partly correct, but has noticeable errors, misses some instructions, or lacks detail.",
    "score4_description": "The response is helpful, relevant and accurate, follows the instructions, with only minor gaps in depth or detail.",
    "score5_description": "The response is excellent: fully accurate, follows every instruction, and is detailed, well organised and insightful.",
}


def default_data_dir() -> Path:
    """The shared data folder: in the checkout (shared/data) or beside it (../shared/data)."""
    for candidate in (REPO / "shared" / "data", REPO.parent / "shared" / "data"):
        if (candidate / QUESTIONS).is_file():
            return candidate
    return REPO.parent / "shared" / "data"


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def build_cases(data_dir: Path) -> list[dict]:
    questions = _read_jsonl(data_dir / QUESTIONS)
    references: dict[int, list[str]] = {}
    ref_path = data_dir / REFERENCES
    if ref_path.is_file():
        for row in _read_jsonl(ref_path):
            references[int(row["question_id"])] = list(row["choices"][0]["turns"])

    cases = []
    for q in questions:
        qid = int(q["question_id"])
        turns = list(q["turns"])
        check: dict = {"type": "judge", "rubric": dict(RUBRIC), "threshold": 4}
        case: dict = {"id": f"mt-{qid}", "category": q["category"], "prompt": turns[0], "turns": turns}
        if qid in references:
            check["reference"] = references[qid][0]
        case["check"] = check
        if qid in references:
            case["reference_turns"] = references[qid]
        cases.append(case)
    return cases


def write_cases(cases: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for case in cases:
            f.write(json.dumps(case, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with the MT-bench jsonl files")
    parser.add_argument("--out", type=Path, default=HERE / "mt_bench.jsonl")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    cases = build_cases(data_dir)
    write_cases(cases, args.out)
    with_ref = sum(1 for c in cases if "reference" in c["check"])
    print(f"wrote {len(cases)} cases ({with_ref} with reference answers) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

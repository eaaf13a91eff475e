"""Published benchmark files as arena suites, so the real benchmarks run through `run` and `score`.

BFCL (gorilla's berkeley-function-call-leaderboard, also in the `bfcl-eval` package): a questions file
(`BFCL_v4_simple_python.json`: one JSON object a line, {id, question: [[messages]], function: [specs]})
and its possible answers (`possible_answer/BFCL_v4_simple_python.json`: {id, ground_truth: [{name:
{arg: [allowed values]}}]}). Each item becomes one `function_call` case, its calls in BFCL's own form.
Multi-turn items (they need BFCL's executable back-ends) and items without a possible answer are left
out, by id.

GSM8K (openai/grade-school-math `test.jsonl`: {question, answer ending in "#### N"}): each line becomes a
`numeric` case prompted as lm-eval's gsm8k.yaml writes it ("Question: ...\\nAnswer:") with N as the
reference, scored in the mode asked for (lm-eval-flexible by default).

Every row is validated as `load_suite` would; a row it would refuse is left out with its reason.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from kernel.errors import ArenaError
from kernel.files import atomic_write_text, read_jsonl

from .numbers import LM_EVAL_FLEXIBLE
from .suite import Problem, case_notes, parse_case

ITEM_NUMBER = re.compile(r"_\d+$")
GSM8K_PROMPT = "Question: {question}\nAnswer:"  # gsm8k.yaml doc_to_text
SHOWN = 5  # skipped rows named in the summary; the rest counted


@dataclass
class Imported:
    """The suite rows made from a benchmark's files, and what was left out or deserves a note."""

    rows: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "id: reason"
    notes: list[str] = field(default_factory=list)

    def add(self, row: dict) -> None:
        """Keep the row if the suite loader accepts it."""
        case, reason = parse_case(row, len(self.rows) + 1)
        if case is None:
            self.skipped.append(f"{row['id']}: {reason}")
            return
        self.rows.append(row)
        self.notes += [f"{row['id']}: {note.reason}" for note in case_notes(case)]

    def summary(self, path: Path) -> str:
        lines = [f"wrote {len(self.rows)} case(s) to {path}"]
        for label, items in (("left out", self.skipped), ("note", self.notes)):
            if items:
                more = f" (and {len(items) - SHOWN} more)" if len(items) > SHOWN else ""
                lines.append(f"{len(items)} {label}: " + "; ".join(items[:SHOWN]) + more)
        return "\n".join(lines)


def bfcl_category(item_id: str) -> str:
    """simple_python_12 -> simple_python; live_parallel_3-1-0 stays whole (no numeric tail)."""
    return ITEM_NUMBER.sub("", item_id)


def bfcl_row(question: dict, truth: list) -> dict:
    calls = [{"name": name, "arguments": arguments} for call in truth for name, arguments in call.items()]
    return {"id": question["id"], "category": bfcl_category(question["id"]), "messages": question["question"][0],
            "tools": question.get("function", []), "check": {"type": "function_call", "calls": calls}}


def import_bfcl(questions_path: Path, answers_path: Path) -> Imported:
    answers = {row.get("id"): row.get("ground_truth") for _, row in read_jsonl(answers_path)}
    imported = Imported()
    for number, question in read_jsonl(questions_path):
        item_id = question.get("id")
        if not isinstance(item_id, str) or not isinstance(question.get("question"), list) or not question["question"]:
            raise ArenaError(f"{questions_path} line {number}: not a BFCL question (needs 'id' and 'question')")
        truth = answers.get(item_id)
        if len(question["question"]) > 1:
            imported.skipped.append(f"{item_id}: multi-turn (needs BFCL's executable back-ends)")
        elif not isinstance(truth, list) or not all(isinstance(call, dict) for call in truth):
            imported.skipped.append(f"{item_id}: no possible answer in {answers_path.name}")
        else:
            imported.add(bfcl_row(question, truth))
    return imported


def gsm8k_answer(solution) -> str | None:
    """The final answer GSM8K writes after "#### " at the end of each solution."""
    if not isinstance(solution, str) or "####" not in solution:
        return None
    return solution.rsplit("####", 1)[1].strip() or None


def import_gsm8k(test_path: Path, mode: str = LM_EVAL_FLEXIBLE) -> Imported:
    imported = Imported()
    for number, item in read_jsonl(test_path):
        answer, question = gsm8k_answer(item.get("answer")), item.get("question")
        if answer is None or not isinstance(question, str):
            raise ArenaError(f"{test_path} line {number}: not a GSM8K item (needs 'question' and an 'answer' "
                             "ending in '#### N')")
        imported.add({"id": f"gsm8k-{number}", "category": "gsm8k",
                      "prompt": GSM8K_PROMPT.format(question=question),
                      "check": {"type": "numeric", "answer": answer, "mode": mode}})
    return imported


def write_suite(imported: Imported, path: Path) -> None:
    if not imported.rows:
        raise ArenaError(f"nothing to write to {path}: every item was left out ({'; '.join(imported.skipped[:SHOWN])})")
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in imported.rows))

"""Training data from a teacher model: one JSON request per input text, kept rows in alpaca format.

    python -m evaluation generate-data --input reviews.csv --field review --template review_replies \\
        --teacher "http://127.0.0.1:8000/v1?model=qwen2.5-7b" --output data/replies.json

For each text the teacher is asked for a JSON object only. The reply is parsed with `json.loads`,
else repaired with `json_repair` (unless it was cut off: truncated answers are dropped), then
validated against the template's pydantic schema; an invalid reply is re-asked with the error
appended. Near-duplicates (ROUGE-L F above a threshold with a kept output, as Self-Instruct does)
are dropped. Every input ends kept or rejected with a reason; nothing is dropped silently.

Beside OUTPUT.json: OUTPUT.progress.jsonl (each processed input and its result, so a re-run skips
them) and OUTPUT.rejects.jsonl (row number, reason, detail and the teacher's last answer).
Teacher errors are not recorded as done: a re-run asks again.
"""
from __future__ import annotations

import hashlib
import json
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import json_repair
from pydantic import ValidationError

from kernel.errors import ArenaError
from kernel.files import JsonlAppender, atomic_write_text, load_done, read_rows, read_text

from .templates import Template, load_template

REASONS = ("invalid_json", "schema", "truncated", "duplicate", "teacher_error", "no_text")
RETRY_NOTE = "Your previous answer was invalid: {error}. Reply with JSON only."
MAX_TEACHER_ERRORS_IN_A_ROW = 5  # a teacher that is down should stop the run, not reject every row
ANSWER_KEPT_CHARS = 2000  # enough of a bad answer to see what went wrong


@dataclass
class Outcome:
    """What became of one input row: alpaca rows when kept, else a reason from REASONS."""

    row: int
    rows: list[dict] = field(default_factory=list)
    reason: str = ""
    detail: str = ""
    repaired: bool = False  # the kept answer parsed only after json_repair
    retries: int = 0  # times the teacher was asked again
    answer: str = ""  # the teacher's last reply, kept for rejects only

    @property
    def kept(self) -> bool:
        return not self.reason


@dataclass
class GenerationReport:
    inputs: int = 0  # input rows considered (after limit), this run and earlier ones
    kept: int = 0  # inputs whose rows were written
    rows: int = 0  # training rows written (review_replies writes two per input)
    repaired: int = 0  # kept inputs whose JSON parsed only after json_repair
    retried: int = 0  # inputs the teacher was asked at least twice, whatever the end
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    resumed: int = 0  # inputs taken from the progress file, not asked again
    pending: int = 0  # inputs not reached because the run stopped early
    output: str = ""
    rejects: str = ""
    stopped: str = ""  # why the run stopped before the end, else ""

    def add(self, outcome: Outcome) -> None:
        self.kept += outcome.kept
        self.rows += len(outcome.rows)
        self.repaired += outcome.kept and outcome.repaired
        self.retried += outcome.retries > 0
        if outcome.reason:
            self.rejected_by_reason[outcome.reason] = self.rejected_by_reason.get(outcome.reason, 0) + 1

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected_by_reason.items())) or "none"
        line = (f"{self.output}: {self.kept} of {self.inputs} inputs kept ({self.rows} rows; "
                f"{self.repaired} repaired, {self.retried} retried, {self.resumed} resumed); rejected: {reasons}")
        return line + (f"; stopped early, {self.pending} not asked: {self.stopped}" if self.stopped else "")


class Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# ----- reading the inputs ----------------------------------------------------------------------

def read_texts(path: Path, field_name: str | None) -> list[tuple[int, str]]:
    """(row number, text) per input: a CSV/JSON/JSONL field (rows numbered as the Training tab does),
    else each non-empty line of a text file. A row without the field gives "" (rejected as no_text)."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".tsv", ".json", ".jsonl"):
        lines = read_text(path, empty_ok=False).splitlines()
        return [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
    if not field_name:
        raise ArenaError(f"{path}: give the field (column or key) that holds the text")
    rows = read_rows(path)
    if not any(isinstance(row, dict) and field_name in row for _, row in rows):
        found = sorted({key for _, row in rows[:20] if isinstance(row, dict) for key in row})
        raise ArenaError(f"{path}: no row has the field '{field_name}' (fields: {', '.join(found) or 'none'})")
    return [(n, text_of(row, field_name)) for n, row in rows]


def text_of(row: object, field_name: str) -> str:
    value = row.get(field_name) if isinstance(row, dict) else None
    return value.strip() if isinstance(value, str) else ""


# ----- one input: ask, parse, validate, re-ask ---------------------------------------------------

def looks_cut_off(reply: str) -> bool:
    """True when the first JSON object or array is still open (or mid-string) at the end of the reply."""
    start = next((i for i, c in enumerate(reply) if c in "{["), None)
    if start is None:
        return False
    depth, in_string, escaped = 0, False, False
    for char in reply[start:]:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return False
    return True


def parse_answer(reply: str, template: Template):
    """(validated answer, whether json_repair was needed); raises Rejected with the reason."""
    if getattr(reply, "finish_reason", "") == "length":
        raise Rejected("truncated", "the teacher stopped at its token limit")
    try:
        data, repaired = json.loads(reply), False
    except ValueError:
        if looks_cut_off(reply):
            raise Rejected("truncated", "the JSON ends before it is closed") from None
        try:
            data, repaired = json_repair.loads(reply), True
        except Exception:  # json_repair's failures are not one documented type
            data = None
    if not isinstance(data, dict):
        raise Rejected("invalid_json", "no JSON object found")
    try:
        return template.schema.model_validate(data), repaired
    except ValidationError as exc:
        raise Rejected("schema", schema_error(exc)) from None


def schema_error(exc) -> str:
    problems = [f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg'].lower()}" for e in exc.errors()[:3]]
    return "; ".join(problems)


def consult(teacher, template: Template, row: int, text: str, max_retries: int) -> Outcome:
    """Ask the teacher about one text, re-asking on invalid JSON or schema errors; never raises for a row."""
    messages = [{"role": "user", "content": template.request(text)}]
    reply = ""
    for attempt in range(max_retries + 1):
        try:
            reply = teacher.complete(messages)
        except ArenaError as exc:
            return Outcome(row, reason="teacher_error", detail=str(exc), retries=attempt, answer=reply)
        try:
            answer, repaired = parse_answer(reply, template)
        except Rejected as bad:
            if bad.reason == "truncated" or attempt == max_retries:  # a cut-off answer is cut off again
                return Outcome(row, reason=bad.reason, detail=bad.detail, retries=attempt,
                               answer=reply[:ANSWER_KEPT_CHARS])
            messages += [{"role": "assistant", "content": reply},
                         {"role": "user", "content": RETRY_NOTE.format(error=bad.detail)}]
            continue
        return Outcome(row, rows=template.to_rows(answer, text), repaired=repaired, retries=attempt)
    raise AssertionError("unreachable: the last attempt always returns")


class NearDuplicates:
    """Kept outputs; a new output whose ROUGE-L F with any of them is above the threshold is a duplicate."""

    def __init__(self, threshold: float):
        from rouge_score import rouge_scorer

        self.threshold = threshold
        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self.kept: list[str] = []

    def duplicate_of(self, outputs: list[str]) -> str:
        """'' when new, else a detail naming the score and the kept output it resembles."""
        if self.threshold >= 1.0:
            return ""
        for output in outputs:
            for earlier in self.kept:
                score = self.scorer.score(earlier, output)["rougeL"].fmeasure
                if score > self.threshold:
                    return f"ROUGE-L {score:.2f} with a kept output: {earlier[:80]!r}"
        return ""

    def add(self, outputs: list[str]) -> None:
        self.kept.extend(outputs)


# ----- the run ---------------------------------------------------------------------------------

@dataclass
class RunFiles:
    output: Path
    progress: Path
    rejects: Path

    @classmethod
    def beside(cls, output: Path) -> "RunFiles":
        stem = output.with_suffix("")
        return cls(output, Path(f"{stem}.progress.jsonl"), Path(f"{stem}.rejects.jsonl"))


def run_settings(input_path: Path, field_name: str | None, template: Template) -> dict:
    """What the progress file was made with: resuming with other settings would mix two datasets."""
    digest = hashlib.sha256(template.prompt.encode()).hexdigest()[:12]
    return {"input": str(Path(input_path).resolve()), "field": field_name, "template": template.name,
            "prompt_sha256": digest}


def load_progress(path: Path, settings: dict) -> dict[int, Outcome]:
    records = load_done(path)
    if not records:
        return {}
    if records[0].get("settings") != settings:
        raise ArenaError(f"{path}: made by a run with other input, field or template; "
                         "delete it or choose another output")
    try:
        return {r["row"]: Outcome(**r) for r in records[1:]}
    except (KeyError, TypeError):
        raise ArenaError(f"{path}: not a progress file of this program; delete it or choose another output") from None


def generate_data(input_path, field: str | None, template: Template | str, teacher, output_path,
                  max_retries: int = 2, dedupe_threshold: float = 0.7, limit: int | None = None,
                  progress: bool = True, cancel: threading.Event | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> GenerationReport:
    """Ask `teacher` (anything with complete(messages) -> str) about every input text; see the module doc.

    `cancel` stops the run before the next text (what was made is written); `on_progress(done, total)`
    is told after each text, for a UI.
    """
    from tqdm import tqdm

    template = load_template(template) if isinstance(template, str) else template
    texts = read_texts(Path(input_path), field)[:limit]
    files = RunFiles.beside(Path(output_path))
    settings = run_settings(Path(input_path), field, template)
    done = load_progress(files.progress, settings)
    report = GenerationReport(inputs=len(texts), output=str(files.output), rejects=str(files.rejects))
    dedupe = NearDuplicates(dedupe_threshold)
    outcomes = [done[row] for row, _ in texts if row in done]
    for outcome in outcomes:
        dedupe.add([r["output"] for r in outcome.rows])
    report.resumed = len(outcomes)
    todo = [(row, text) for row, text in texts if row not in done]
    fresh = not (files.progress.is_file() and files.progress.stat().st_size)
    failures_in_a_row = 0
    with JsonlAppender(files.progress) as log, \
            tqdm(todo, total=len(texts), initial=len(outcomes), file=sys.stderr, disable=not progress,
                 unit="text", desc="generate") as bar:
        if fresh:
            log.write({"settings": settings})  # the first line says what the rest was made with
        if on_progress is not None:
            on_progress(len(outcomes), len(texts))
        try:
            for row, text in bar:
                if cancel is not None and cancel.is_set():
                    report.stopped = "cancelled"
                    break
                outcome = process(teacher, template, row, text, max_retries, dedupe)
                outcomes.append(outcome)
                failures_in_a_row = failures_in_a_row + 1 if outcome.reason == "teacher_error" else 0
                if outcome.reason != "teacher_error":  # teacher errors are asked again next run
                    log.write(asdict(outcome))
                if on_progress is not None:
                    on_progress(len(outcomes), len(texts))
                if failures_in_a_row >= MAX_TEACHER_ERRORS_IN_A_ROW:
                    report.stopped = f"the teacher failed {failures_in_a_row} times in a row: {outcome.detail}"
                    break
        finally:  # an interrupted run still leaves what it made readable
            write_results(files, outcomes)
    for outcome in outcomes:
        report.add(outcome)
    report.pending = len(texts) - len(outcomes)
    return report


def process(teacher, template: Template, row: int, text: str, max_retries: int, dedupe: NearDuplicates) -> Outcome:
    if not text:
        return Outcome(row, reason="no_text", detail="the input has no text in this row")
    outcome = consult(teacher, template, row, text, max_retries)
    if outcome.kept:
        outputs = [r["output"] for r in outcome.rows]
        similar = dedupe.duplicate_of(outputs)
        if similar:
            answer = json.dumps(outcome.rows, ensure_ascii=False)[:ANSWER_KEPT_CHARS]
            return Outcome(row, reason="duplicate", detail=similar, repaired=outcome.repaired,
                           retries=outcome.retries, answer=answer)
        dedupe.add(outputs)
    return outcome


def write_results(files: RunFiles, outcomes: list[Outcome]) -> None:
    ordered = sorted(outcomes, key=lambda o: o.row)
    rows = [r for o in ordered if o.kept for r in o.rows]
    atomic_write_text(files.output, json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
    rejects = [{"row": o.row, "reason": o.reason, "detail": o.detail, "answer": o.answer}
               for o in ordered if not o.kept]
    atomic_write_text(files.rejects, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))

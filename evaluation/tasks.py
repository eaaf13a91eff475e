"""Background runs for the web app: evaluations and dataset generation, one thread each, with
progress the UI polls, a cancel, and a list of runs (running and past) that survives a reload.

Each run has a record, DATA/runs/<id>.json, written when it starts and when it ends; the list is
read from those files, so a reloaded page (or a restarted app) finds every run again. A run the
app was running when it stopped is listed as interrupted: threads do not outlive their process.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

from kernel.data_dir import DataDir, stamp
from kernel.errors import ArenaError, first_line
from kernel.files import atomic_write_text
from kernel.process import process_alive, process_create_time

from .runner import EvalConfig, EvalRun, Progress, run_evaluation

log = logging.getLogger(__name__)

KINDS = ("evaluation", "generation")
ENDED = ("done", "cancelled", "failed", "interrupted")
INTERRUPTED = "the app stopped while this ran: start it again (stored answers and rows are reused)"


@dataclass
class RunRecord:
    """What the list shows about one run, as saved in DATA/runs/<id>.json."""

    id: str
    kind: str  # one of KINDS
    title: str  # the suite's file name, or the dataset being written
    variants: list[str]  # the evaluated variants, or the teacher
    status: str = "running"  # or one of ENDED
    started: str = ""  # local time, "YYYY-MM-DD HH:MM:SS"
    seconds: float = 0.0
    done: int = 0
    total: int = 0
    message: str = "starting"
    summary: str = ""  # overall scores per variant, or what the generation kept
    error: str = ""
    files: dict[str, str] = field(default_factory=dict)  # label -> path, for downloads
    pid: int = 0  # the app process running it: a record left "running" by a dead one was interrupted
    pid_started: float | None = None

    @classmethod
    def from_file(cls, path: Path) -> "RunRecord | None":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
        except (OSError, ValueError, TypeError, KeyError):
            log.warning("unreadable run record %s: skipped", path)
            return None


@dataclass
class EvalTask:
    """A run this app is running (or ran): its record plus the live progress and cancel."""

    record: RunRecord
    progress: Progress = field(default_factory=Progress)
    cancel: threading.Event = field(default_factory=threading.Event)
    run: EvalRun | None = None  # an evaluation's results, once it ended
    paths: dict | None = None  # an evaluation's report files

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def error(self) -> str:
        return self.record.error


class EvalTasks:
    def __init__(self, engine, data_dir):
        self.engine = engine
        self.data_dir = Path(data_dir)
        self.paths = DataDir(self.data_dir)
        self.folder = self.paths.runs
        self.tasks: dict[str, EvalTask] = {}
        self._lock = threading.Lock()

    # ----- starting ------------------------------------------------------------------------------

    def start(self, config: EvalConfig, judge=None) -> EvalTask:
        """Evaluate in the background; the record lists the suite's file name and the variants."""
        record = RunRecord(new_id("eval"), "evaluation", Path(config.suite).name, list(config.variants))
        return self._launch(record, lambda task: self._evaluate(task, config, judge))

    def generate(self, source: Path, field_name: str, template, teacher, teacher_name: str,
                 output: Path) -> EvalTask:
        """Make a dataset with a teacher in the background (see evaluation.generate_data)."""
        record = RunRecord(new_id("gen"), "generation", output.name, [teacher_name])
        return self._launch(record, lambda task: self._generate(task, source, field_name, template, teacher, output))

    def _launch(self, record: RunRecord, work: Callable[[EvalTask], dict]) -> EvalTask:
        record.started = time.strftime("%Y-%m-%d %H:%M:%S")
        record.pid = os.getpid()
        record.pid_started = process_create_time(record.pid)
        task = EvalTask(record)
        with self._lock:
            self.tasks[record.id] = task
        self._save(record)
        threading.Thread(target=self._run, args=(task, work), daemon=True, name=record.id).start()
        return task

    def _run(self, task: EvalTask, work: Callable[[EvalTask], dict]) -> None:
        started = time.time()
        try:
            ending = work(task)
        except ArenaError as exc:
            ending = {"status": "failed", "error": str(exc)}
        except Exception as exc:  # shown as one line; the traceback goes to the server log
            log.exception("%s failed", task.id)
            ending = {"status": "failed", "error": f"{type(exc).__name__}: {first_line(exc)}"}
        p = task.progress
        ended = replace(task.record, done=p.done, total=p.total, message=p.message,
                        seconds=round(time.time() - started, 1), **ending)
        self._save(ended)  # the file first: whoever sees the run ended can read it from the file too
        task.record = ended

    def _evaluate(self, task: EvalTask, config: EvalConfig, judge) -> dict:
        from .report import write_report
        from .preference import looks_like_pairs, run_preference

        if looks_like_pairs(config.suite):  # preference pairs: the preference view, not a suite
            task.run = run_preference(self.engine, config, self.data_dir, progress=task.progress, cancel=task.cancel)
        else:
            task.run = run_evaluation(self.engine, config, self.data_dir, judge=judge, progress=task.progress,
                                      cancel=task.cancel)
        task.paths = write_report(task.run)
        files = {"report (HTML)": task.paths["html"], "report (Markdown)": task.paths["markdown"],
                 "chart": task.paths.get("chart"), "answers": task.run.run_dir / "answers.jsonl"}
        return {"status": "cancelled" if task.run.cancelled else "done", "summary": evaluation_summary(task),
                "files": {label: str(path) for label, path in files.items() if path and Path(path).exists()}}

    def _generate(self, task: EvalTask, source: Path, field_name: str, template, teacher, output: Path) -> dict:
        from .generate_data import generate_data

        def progress(done: int, total: int) -> None:
            task.progress.update(done, total, f"text {done} of {total}")

        report = generate_data(str(source), field_name, template, teacher, str(output), progress=False,
                               cancel=task.cancel, on_progress=progress)
        files = {"dataset": report.output, "rejects": report.rejects}
        report.output = output.name  # the summary names the dataset, not this server's folders
        status = "cancelled" if task.cancel.is_set() else ("failed" if report.stopped else "done")
        return {"status": status, "summary": report.summary(), "error": report.stopped if status == "failed" else "",
                "files": files}

    # ----- reading and cancelling ----------------------------------------------------------------

    def get(self, task_id: str) -> EvalTask | None:
        return self.tasks.get(task_id)

    def latest(self) -> EvalTask | None:
        with self._lock:
            return next(reversed(self.tasks.values()), None) if self.tasks else None

    def record(self, run_id: str) -> RunRecord | None:
        """A run by id, live or from its file (an id that is not a run's gives None)."""
        task = self.tasks.get(run_id)
        if task is not None:
            return self._live(task)
        path = self.paths.run_record(run_id)
        if not run_id or path.parent != self.folder or not path.is_file():
            return None
        record = RunRecord.from_file(path)
        return self._settled(record) if record is not None else None

    def runs(self, limit: int = 50) -> list[RunRecord]:
        """Every run, newest first: this app's with live progress, the rest as their files say."""
        found = {}
        for path in self.folder.glob("*.json") if self.folder.is_dir() else []:
            record = RunRecord.from_file(path)
            if record is not None:
                found[record.id] = self._settled(record)
        for task in list(self.tasks.values()):
            found[task.id] = self._live(task)
        return sorted(found.values(), key=lambda r: (r.started, r.id), reverse=True)[:limit]

    def cancel(self, run_id: str) -> RunRecord:
        """Ask a running run to stop after its current case or text; a refusal says why in one line."""
        record = self.record(run_id)
        if record is None:
            raise ArenaError(f"no run '{run_id}'")
        if record.status != "running":
            raise ArenaError(f"run {run_id} has already ended ({record.status})")
        task = self.tasks.get(run_id)
        if task is None:
            raise ArenaError(f"run {run_id} belongs to another app process: stop it there")
        task.cancel.set()
        return record

    def _live(self, task: EvalTask) -> RunRecord:
        record = task.record
        if record.status == "running":
            p = task.progress
            record.done, record.total, record.message = p.done, p.total, p.message
            if task.cancel.is_set():
                record.message = f"stopping after the current one ({p.message})"
        return record

    def _settled(self, record: RunRecord) -> RunRecord:
        """A record a dead process left "running" was interrupted."""
        if record.status == "running" and record.id not in self.tasks and \
                not process_alive(record.pid, record.pid_started):
            record.status, record.error = "interrupted", INTERRUPTED
        return record

    def _save(self, record: RunRecord) -> None:
        try:
            atomic_write_text(self.paths.run_record(record.id), json.dumps(asdict(record), indent=1, default=str))
        except OSError as exc:  # the run goes on; only its place in the list after a restart is lost
            log.warning("could not save run record %s: %s", record.id, exc)


def new_id(prefix: str) -> str:
    """Sorts by start time; the random tail keeps two runs of the same second apart."""
    return f"{prefix}-{stamp()}-{secrets.token_hex(2)}"


def evaluation_summary(task: EvalTask) -> str:
    """Overall pass rate per variant, and how many answers came from the answer store."""
    import pandas as pd

    scores = pd.read_csv(task.paths["scores"])
    overall = scores[scores["category"] == "overall"]
    parts = [f"{row.variant} {row.score * 100:.0f}%" if row.score == row.score else f"{row.variant} n/a"
             for row in overall.itertuples()]
    reused = sum(r.reused for r in task.run.results)
    if reused:
        parts.append(f"reused stored answers: {reused}")
    return " · ".join(parts)

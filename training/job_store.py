"""Training jobs' state: DATA/jobs.sqlite, DATA/jobs/<id>/, and the trainer's side of reporting.

The app (through `training.jobs.JobRunner`) and the trainer process (through `JobReporter`) share
this store: SQLite in WAL mode, a connection per operation, so neither holds a lock for long.

A job's folder holds job.yaml (the TrainConfig), train.log (stdout+stderr), metrics.jsonl (one JSON
object per log event), progress.json (latest progress, replaced atomically), checkpoints/ (Trainer
checkpoints, `checkpoint-<step>`) and CANCEL (a flag the trainer checks every step).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, ContextManager

from kernel import sqlite_store
from kernel.clock import utc_now_iso
from kernel.data_dir import DataDir
from kernel.errors import ArenaError
from kernel.files import append_record, atomic_write_text, complete_records
from kernel.process import process_alive, process_create_time
from training.config import TrainConfig
from training.process_watch import LOG_TAIL_LINES, died_reason, one_line, tail_lines


SCHEMA_VERSION = 1
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")  # transformers' checkpoint folder names

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    config TEXT NOT NULL, command TEXT NOT NULL, pid INTEGER, pid_started REAL,
    created TEXT NOT NULL, started TEXT, finished TEXT, error TEXT, log_tail TEXT, resume_of TEXT, adapter_path TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
"""


@dataclass
class Job:
    """One training run. `pid` is the process the runner started (the leader of the job's process
    group); `pid_started` its create time, so a pid the OS reused for another program is not mistaken."""

    id: str
    name: str
    status: str
    config: dict
    command: list[str] = field(default_factory=list)
    pid: int | None = None
    pid_started: float | None = None
    created: str = ""
    started: str | None = None
    finished: str | None = None
    error: str | None = None
    log_tail: str | None = None
    resume_of: str | None = None
    adapter_path: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config, where=f"job {self.id}")


COLUMNS = tuple(f.name for f in fields(Job))
JSON_COLUMNS = ("config", "command")
CommandBuilder = Callable[[Job, Path], list]


@dataclass(frozen=True)
class JobFiles:
    """Where one job's files live (see the module docstring)."""

    folder: Path
    config: Path
    log: Path
    metrics: Path
    progress: Path
    checkpoints: Path
    cancel_flag: Path

    @classmethod
    def of(cls, data_dir: str | Path, job_id: str) -> "JobFiles":
        folder = DataDir(data_dir).job(job_id)
        return cls(folder, folder / "job.yaml", folder / "train.log", folder / "metrics.jsonl",
                   folder / "progress.json", folder / "checkpoints", folder / "CANCEL")


# ----- small helpers ------------------------------------------------------------------------------

def new_job_id() -> str:
    """Sorts by creation time; the random tail keeps two jobs of the same second apart."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest `checkpoint-<step>` folder inside `folder`, or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return max(found)[1] if found else None


# ----- the store ----------------------------------------------------------------------------------

class JobStore:
    """Jobs in SQLite, shared by the app and trainer processes: a connection per operation, WAL mode."""

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir).expanduser().resolve()  # absolute: the command runs in the repo root
        self.paths = DataDir(self.data_dir)
        self.path = self.paths.jobs_db
        try:
            self.paths.jobs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArenaError(f"cannot create jobs folder in {self.data_dir}: {exc.strerror}") from None
        self._migrate()

    def files(self, job_id: str) -> JobFiles:
        return JobFiles.of(self.data_dir, job_id)

    def create(self, config: TrainConfig, command_builder: CommandBuilder, resume_of: str | None = None) -> Job:
        """A queued job: its folder and job.yaml are written before it is visible to the scheduler. The command
        that runs it (`training.jobs.job_command` unless a test says otherwise) is recorded, so it can rerun."""
        config.validate()
        job = Job(id=new_job_id(), name=config.name, status="queued", config=config.to_dict(),
                  created=utc_now_iso(), resume_of=resume_of)
        files = self.files(job.id)
        files.checkpoints.mkdir(parents=True)
        config.save(files.config)
        job.command = [str(part) for part in command_builder(job, self.data_dir)]
        values = [self._encode(name, getattr(job, name)) for name in COLUMNS]
        with self._connect() as conn, conn:
            conn.execute(f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values)
        return job

    def get(self, job_id: str) -> Job:
        with self._connect() as conn:
            row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise ArenaError(f"no training job '{job_id}'")
        return self._decode(row)

    def list(self, limit: int = 100) -> list[Job]:
        """Newest first."""
        return self._select("1 = 1 ORDER BY seq DESC LIMIT ?", (limit,))

    def with_status(self, *statuses: str) -> list[Job]:
        """Oldest first (the order queued jobs start in)."""
        return self._select(f"status IN ({', '.join('?' * len(statuses))}) ORDER BY seq", statuses)

    def update(self, job_id: str, **changes) -> Job:
        unknown = set(changes) - set(COLUMNS[1:])
        if unknown:
            raise ArenaError(f"job: cannot set {', '.join(sorted(unknown))}")
        if changes.get("status", "queued") not in STATUSES:
            raise ArenaError(f"job: status must be one of {', '.join(STATUSES)}")
        if changes and not self._transition(job_id, STATUSES, **changes):
            raise ArenaError(f"no training job '{job_id}'")
        return self.get(job_id)

    def claim(self, job_id: str) -> bool:
        """queued -> running, unless it was cancelled first: the scheduler's check-and-set."""
        return self._transition(job_id, ("queued",), status="running", started=utc_now_iso())

    def mark_running(self, job_id: str, pid: int, pid_started: float | None) -> None:
        """Record the job's process; a job that already ended (a very quick trainer) keeps its status."""
        with self._connect() as conn, conn:
            conn.execute("UPDATE jobs SET pid = ?, pid_started = ?, started = COALESCE(started, ?), "
                         "status = CASE WHEN status IN ('queued', 'running') THEN 'running' ELSE status END "
                         "WHERE id = ?", (pid, pid_started, utc_now_iso(), job_id))

    def finish(self, job_id: str, status: str, error: str | None = None, *, from_statuses=ACTIVE) -> bool:
        """End a job once: the first report wins and a later one changes nothing (returns False)."""
        if status not in FINAL:
            raise ArenaError(f"job: a job ends as one of {', '.join(FINAL)}, not {status!r}")
        return self._transition(job_id, from_statuses, status=status, error=one_line(error) if error else None,
                                finished=utc_now_iso(), log_tail=self.read_log_tail(job_id))

    def reconcile(self) -> list[str]:
        """Jobs marked running whose process is gone become failed, never left 'running'; returns their ids.
        Meant for start-up, before this app launches anything (a job being launched has no pid yet)."""
        dead = []
        for job in self.with_status("running"):
            if not process_alive(job.pid, job.pid_started):
                reason = died_reason(tail_lines(self.files(job.id).log))
                if self.finish(job.id, "failed", reason, from_statuses=("running",)):
                    dead.append(job.id)
        return dead

    # progress, for the UI

    def read_metrics(self, job_id: str) -> list[dict]:
        return complete_records(self.files(job_id).metrics)[0]

    def read_progress(self, job_id: str) -> dict | None:
        try:
            return json.loads(self.files(job_id).progress.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None

    def read_log_tail(self, job_id: str, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(tail_lines(self.files(job_id).log, lines))

    # internals

    def _select(self, where: str, params) -> list[Job]:
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE {where}", tuple(params)).fetchall()
        return [self._decode(row) for row in rows]

    def _transition(self, job_id: str, from_statuses, **changes) -> bool:
        sets = ", ".join(f"{name} = ?" for name in changes)
        values = [self._encode(name, value) for name, value in changes.items()]
        marks = ", ".join("?" * len(from_statuses))
        with self._connect() as conn, conn:
            cursor = conn.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND status IN ({marks})",
                                  (*values, job_id, *from_statuses))
        return cursor.rowcount == 1

    @staticmethod
    def _encode(name: str, value):
        return json.dumps(value, ensure_ascii=False) if name in JSON_COLUMNS else value

    def _decode(self, row: tuple) -> Job:
        record = dict(zip(COLUMNS, row))
        for name in JSON_COLUMNS:
            try:
                record[name] = json.loads(record[name])
            except ValueError:
                raise ArenaError(f"{self.path}: job {record['id']} has unreadable {name}") from None
        return Job(**record)

    def _connect(self) -> ContextManager[sqlite3.Connection]:
        return sqlite_store.connect(self.path, "job store")

    def _migrate(self) -> None:
        sqlite_store.migrate(self.path, "job store", SCHEMA, SCHEMA_VERSION)


# ----- the trainer's side -------------------------------------------------------------------------

class JobReporter:
    """What the trainer process calls (on the main process only) to report back to the app."""

    def __init__(self, data_dir: str | Path, job_id: str):
        self.store = JobStore(data_dir)
        self.job_id = job_id
        self.files = self.store.files(job_id)
        self.job = self.store.get(job_id)  # an unknown id fails here, before any training

    def running(self, pid: int | None = None) -> None:
        """The trainer is up. The runner already recorded its launcher (the process group it watches);
        a job run by hand has no pid yet, so this process becomes the one to watch."""
        if self.store.get(self.job_id).pid is None:
            pid = pid or os.getpid()
            self.store.mark_running(self.job_id, pid, process_create_time(pid))

    def progress(self, values: dict) -> None:
        atomic_write_text(self.files.progress, json.dumps({"time": time.time(), **values}, default=str))

    def metric(self, values: dict) -> None:
        append_record(self.files.metrics, {"time": time.time(), **values})

    def cancel_requested(self) -> bool:
        return self.files.cancel_flag.exists()

    def succeeded(self, adapter_path: str | Path) -> None:
        self.store.update(self.job_id, adapter_path=str(adapter_path))
        self.store.finish(self.job_id, "succeeded")

    def cancelled(self) -> None:
        self.store.finish(self.job_id, "cancelled")

    def failed(self, error: str) -> None:
        self.store.finish(self.job_id, "failed", error)

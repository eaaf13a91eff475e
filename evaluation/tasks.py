"""Background evaluation runs for the web app: one thread per run, progress the UI can poll."""
from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, field

from kernel.errors import ArenaError, first_line

from .runner import EvalConfig, EvalRun, Progress, run_evaluation

log = logging.getLogger(__name__)


@dataclass
class EvalTask:
    id: str
    config: EvalConfig
    progress: Progress = field(default_factory=Progress)
    cancel: threading.Event = field(default_factory=threading.Event)
    run: EvalRun | None = None
    paths: dict | None = None
    error: str = ""

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        if self.paths is not None:
            return "cancelled" if self.run and self.run.cancelled else "done"
        return "running"


class EvalTasks:
    def __init__(self, engine, data_dir):
        self.engine = engine
        self.data_dir = data_dir
        self.tasks: dict[str, EvalTask] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def start(self, config: EvalConfig, judge=None) -> EvalTask:
        with self._lock:
            task = EvalTask(id=f"eval-{next(self._ids)}", config=config)
            self.tasks[task.id] = task
        threading.Thread(target=self._run, args=(task, judge), daemon=True, name=task.id).start()
        return task

    def _run(self, task: EvalTask, judge) -> None:
        from .report import write_report

        try:
            task.run = run_evaluation(self.engine, task.config, self.data_dir, judge=judge,
                                      progress=task.progress, cancel=task.cancel)
            task.paths = write_report(task.run)
        except ArenaError as exc:
            task.error = str(exc)
        except Exception as exc:  # shown as one line; the traceback goes to the server log
            log.exception("evaluation %s failed", task.id)
            task.error = f"{type(exc).__name__}: {first_line(exc)}"

    def get(self, task_id: str) -> EvalTask | None:
        return self.tasks.get(task_id)

    def latest(self) -> EvalTask | None:
        return next(reversed(self.tasks.values()), None) if self.tasks else None

"""The data folder's layout: every path the app writes, named here and nowhere else.

    DATA/
      models/                    base models converted for this app (the default SmolLM2 lands here)
      adapters/<name>/           trained and uploaded LoRA adapters
      trash/<name>-<time>/       adapters deleted, replaced or retrained: moved here, never rm -rf
      datasets/                  training data made in the app (Evaluate tab's generator, Training uploads)
      uploads/                   suites uploaded in the Evaluate tab
      exports/votes-<time>.*     Arena votes exported as preference pairs
      votes.sqlite               Arena and Compare votes
      ratings.sqlite             1-to-5 ratings of single answers (Compare, and Arena after the reveal)
      jobs.sqlite, jobs/<id>/    training jobs and each one's config, log, metrics and checkpoints
      eval.sqlite                evaluation answers, reused when nothing they depend on changed
      adapter_decisions.json     "serve anyway" / "do not serve" per adapter whose named base is another model
      evaluations/<time>-<suite>/  one evaluation run: its answers and reports
      runs/<id>.json             the Evaluate tab's background runs (evaluations, dataset generation), listed after a reload

DATA is --data-dir, else $ARENA_DATA_DIR, else ./arena_data (`resolve_data_dir`).
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ArenaError

DATA_DIR_ENV = "ARENA_DATA_DIR"
DEFAULT_DATA_DIR = "arena_data"


def resolve_data_dir(arg: str | os.PathLike | None = None) -> Path:
    """The one folder for everything the program writes: --data-dir, else $ARENA_DATA_DIR, else ./arena_data."""
    chosen = arg or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    path = Path(chosen).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArenaError(f"cannot create data folder {path}: {exc.strerror}") from None
    return path


def stamp() -> str:
    """Local time to the second, as the names of trash folders, runs and exports carry it."""
    return time.strftime("%Y%m%d-%H%M%S")


@dataclass(frozen=True)
class DataDir:
    """Paths under one data folder (see the module docstring). Asking for a path creates nothing."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # folders
    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"

    @property
    def trash(self) -> Path:
        return self.root / "trash"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def evaluations(self) -> Path:
        return self.root / "evaluations"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    # databases
    @property
    def adapter_decisions(self) -> Path:
        """The user's "serve anyway" / "do not serve" per adapter (models/fit.py)."""
        return self.root / "adapter_decisions.json"

    @property
    def votes_db(self) -> Path:
        return self.root / "votes.sqlite"

    @property
    def ratings_db(self) -> Path:
        return self.root / "ratings.sqlite"

    @property
    def jobs_db(self) -> Path:
        return self.root / "jobs.sqlite"

    @property
    def eval_db(self) -> Path:
        return self.root / "eval.sqlite"

    # one item
    def adapter(self, name: str) -> Path:
        return self.adapters / name

    def job(self, job_id: str) -> Path:
        return self.jobs / job_id

    def run_record(self, run_id: str) -> Path:
        return self.runs / f"{run_id}.json"

    def evaluation_run(self, suite_name: str) -> Path:
        """A new run's folder, named by when it started and the suite it ran."""
        return self.evaluations / f"{stamp()}-{suite_name}"

    def votes_export(self, suffix: str) -> Path:
        return self.exports / f"votes-{stamp()}.{suffix}"

    def heldout_pairs(self, adapter_name: str) -> Path:
        """A preference job's validation pairs, beside the exports, for the preference view."""
        return self.exports / f"heldout-{adapter_name}.jsonl"

    def votes_dataset(self, adapter_name: str) -> Path:
        """The pairs the Leaderboard's "Train on these votes" hands to a DPO job making `adapter_name`."""
        return self.datasets / f"votes-{adapter_name}-{stamp()}.jsonl"

    def dataset(self, name: str) -> Path:
        """A generated dataset's file: the name given, with .json added when it lacks it."""
        return self.datasets / (name if name.endswith(".json") else name + ".json")

    def move_to_trash(self, path: Path, name: str | None = None) -> Path:
        """Move a folder to trash/<name>-<time> (recoverable, never rm -rf); returns where it went."""
        self.trash.mkdir(parents=True, exist_ok=True)
        slot = f"{name or Path(path).name}-{stamp()}"
        target, copies = self.trash / slot, 1
        while target.exists():  # the same name trashed twice in one second: both are kept
            copies += 1
            target = self.trash / f"{slot}-{copies}"
        shutil.move(str(path), target)
        return target

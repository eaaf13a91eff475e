"""The context object every tab receives, and each session's running requests (no module-level state
anywhere). The settings themselves are in app.options, read before the model libraries load."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from kernel.config import SamplingParams
from models import ArenaError, Engine

from .access import Access
from .options import AppSettings

REPO = Path(__file__).resolve().parent.parent
BUNDLED = [REPO / "training" / "examples", REPO / "evaluation" / "suites"]
CPU_NEW_TOKENS = 96  # default max new tokens on a CPU (an answer in ~10 s on the default model)
DEVICE_NEW_TOKENS = 256


class SessionRequests:
    """Each session's running requests, so Stop (or closing the tab) cancels every one of them, not only
    the newest; and, when `limit` is set, how many one session may run at once."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._running: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def running(self, session: str) -> Iterator[threading.Event]:
        """A request's cancel event for as long as it runs; refused when the session is at its limit."""
        event = threading.Event()
        with self._lock:
            events = self._running.setdefault(session, set())
            if self.limit is not None and len(events) >= self.limit:
                raise ArenaError(f"this session already has {len(events)} requests running (the limit on this "
                                 "server): wait for them or press Stop")
            events.add(event)
        try:
            yield event
        finally:
            with self._lock:
                events.discard(event)
                if not events:
                    self._running.pop(session, None)

    def count(self, session: str) -> int:
        with self._lock:
            return len(self._running.get(session, ()))

    def cancel(self, session: str) -> None:
        with self._lock:
            events = list(self._running.get(session, ()))
        for event in events:
            event.set()


@dataclass
class AppContext:
    """Everything a tab may call: passed to each tab's build function."""

    engine: Engine
    settings: AppSettings
    votes: object  # arena.votes.VoteStore: read by the leaderboard and exports
    search: object | None  # chat.search.WebSearch, None when search is off
    jobs: object | None = None  # training.jobs.JobRunner; None in public mode
    evals: object | None = None  # evaluation.tasks.EvalTasks
    ballots: object | None = None  # arena.ballots.VoteRule: the only way a vote or a rating is cast
    ratings: object | None = None  # arena.ratings.RatingStore: read by the leaderboard
    requests: SessionRequests = field(default_factory=SessionRequests)
    access: Access = field(default_factory=Access)

    @property
    def owned_folders(self) -> list[Path]:
        """Where a path typed in the UI may point (kernel.paths.owned_file): bundled files and DATA's inputs,
        and the preference pairs the app itself wrote (Leaderboard exports, held-out pairs) in DATA/exports."""
        paths = self.engine.config.paths
        return [*BUNDLED, paths.datasets, paths.uploads, paths.exports]

    @property
    def default_new_tokens(self) -> int:
        """Max new tokens by default: on a CPU (about 10 tokens/s on the default model) an answer in ~10 s, not minutes."""
        return CPU_NEW_TOKENS if str(self.engine.info()["device"]).startswith("cpu") else DEVICE_NEW_TOKENS

    def relative_name(self, path: str | Path) -> str:
        """A file as the pickers show it: relative to the project, or DATA/... inside the data folder."""
        path = Path(path)
        for root, shown in ((self.engine.config.data_dir, "DATA"), (REPO, "")):
            try:
                inside = path.resolve().relative_to(Path(root).resolve())
            except ValueError:
                continue
            return f"{shown}/{inside}" if shown else str(inside)
        return path.name

    def check_request_size(self, columns: int, params: list[SamplingParams]) -> None:
        """On a public server, refuse in one line a request for more columns or new tokens than allowed."""
        s = self.settings
        if not s.public:
            return
        if columns > s.public_max_columns:
            raise ArenaError(f"{columns} columns asked; this public server answers at most {s.public_max_columns}")
        tokens = max(p.max_new_tokens for p in params)
        if tokens > s.public_max_new_tokens:
            raise ArenaError(f"{tokens} new tokens asked; this public server allows at most {s.public_max_new_tokens}")

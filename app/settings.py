"""App settings and the context object every tab receives (no module-level state anywhere)."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from models import ArenaError, Engine


@dataclass
class AppSettings:
    host: str = "127.0.0.1"
    port: int = 7860
    public: bool = False  # a public Space: no uploads, deletions or training
    auth: tuple[str, str] | None = None
    max_message_chars: int = 4000
    max_upload_mb: int = 200
    search_provider: str = "duckduckgo"  # duckduckgo, searxng or off
    searxng_url: str | None = None
    search_timeout_s: float = 10.0

    @staticmethod
    def parse_auth(value: str | None) -> tuple[str, str] | None:
        if not value:
            return None
        user, sep, password = value.partition(":")
        if not sep or not user or not password:
            raise ArenaError("--auth / ARENA_AUTH must look like USER:PASSWORD")
        return user, password

    @classmethod
    def from_env(cls, **overrides) -> "AppSettings":
        """Environment first (Spaces sets variables, not flags), then explicit overrides."""
        env = os.environ
        on_spaces = bool(env.get("SPACE_ID"))
        values = dict(
            host=env.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if on_spaces else "127.0.0.1"),
            port=int(env.get("GRADIO_SERVER_PORT") or 7860),
            public=env.get("ARENA_PUBLIC", "").lower() in ("1", "true", "yes"),
            auth=cls.parse_auth(env.get("ARENA_AUTH")),
            search_provider=env.get("ARENA_SEARCH", "duckduckgo"),
            searxng_url=env.get("ARENA_SEARXNG_URL") or None,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class SessionCancels:
    """One cancel event per browser session, so Stop (or closing the tab) ends that session's answers."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def fresh(self, session: str) -> threading.Event:
        with self._lock:
            event = self._events[session] = threading.Event()
            return event

    def cancel(self, session: str) -> None:
        with self._lock:
            event = self._events.pop(session, None)
        if event is not None:
            event.set()


@dataclass
class AppContext:
    """Everything a tab may call: passed to each tab's build function."""

    engine: Engine
    settings: AppSettings
    votes: object  # evaluation.votes.VoteStore
    search: object | None  # models.search.WebSearch, None when search is off
    jobs: object | None = None  # training.jobs.JobRunner; None in public mode
    evals: object | None = None  # evaluation.tasks.EvalTasks
    cancels: SessionCancels = field(default_factory=SessionCancels)

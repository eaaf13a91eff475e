"""The vote store: every A/B judgement a user gives, kept in one SQLite file in the data folder.

Each vote keeps the whole conversation both sides saw, so the votes can later be turned into
preference pairs for training (see `evaluation.export`) and into a leaderboard (`evaluation.rating`).
Gradio calls handlers from many threads, so every operation opens its own short-lived connection;
the file is in WAL mode so readers never wait for a writer.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import ContextManager

from kernel import sqlite_store
from kernel.clock import utc_now_iso
from kernel.data_dir import DataDir
from kernel.errors import ArenaError

SCHEMA_VERSION = 1
WINNERS = ("a", "b", "tie", "both_bad")
MODES = ("arena", "compare")
MESSAGE_ROLES = ("system", "user", "assistant", "tool")

SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    session_id TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('arena', 'compare')),
    variant_a TEXT NOT NULL,
    variant_b TEXT NOT NULL,
    winner TEXT NOT NULL CHECK (winner IN ('a', 'b', 'tie', 'both_bad')),
    conversation_a TEXT NOT NULL,
    conversation_b TEXT NOT NULL,
    params TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS votes_by_variants ON votes (variant_a, variant_b);
"""
COLUMNS = ("id", "created", "session_id", "mode", "variant_a", "variant_b", "winner",
           "conversation_a", "conversation_b", "params")


@dataclass
class Vote:
    """One judgement: which of two answers (A or B) was better, with everything needed to replay it.

    winner: "a", "b", "tie" or "both_bad". mode: "arena" (names hidden until the vote) or "compare".
    conversation_a / conversation_b: the {role, content} messages each side saw, ending with its answer.
    `created` (ISO-8601 UTC) and `id` are filled in by `VoteStore.add`.
    """

    variant_a: str
    variant_b: str
    winner: str
    conversation_a: list[dict]
    conversation_b: list[dict]
    params: dict = field(default_factory=dict)
    mode: str = "arena"
    session_id: str = ""
    created: str | None = None
    id: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse a vote that could not be rated or exported, naming the bad field."""
        for side in ("variant_a", "variant_b"):
            name = getattr(self, side)
            if not isinstance(name, str) or not name.strip():
                raise ArenaError(f"vote: {side} must be a non-empty variant name, got {name!r}")
        if self.winner not in WINNERS:
            raise ArenaError(f"vote: winner must be one of {', '.join(WINNERS)}, got {self.winner!r}")
        if self.mode not in MODES:
            raise ArenaError(f"vote: mode must be 'arena' or 'compare', got {self.mode!r}")
        if not isinstance(self.session_id, str):
            raise ArenaError(f"vote: session_id must be text, got {type(self.session_id).__name__}")
        if not isinstance(self.params, dict):
            raise ArenaError(f"vote: params must be a dict of sampling parameters, got {type(self.params).__name__}")
        check_conversation(self.conversation_a, "conversation_a")
        check_conversation(self.conversation_b, "conversation_b")


def check_conversation(messages, label: str) -> None:
    """A conversation must hold at least one user turn and end with the answer that was judged."""
    if not isinstance(messages, list) or not messages:
        raise ArenaError(f"vote: {label} must be a non-empty list of {{role, content}} messages")
    for number, message in enumerate(messages, 1):
        if not isinstance(message, dict) or message.get("role") not in MESSAGE_ROLES:
            raise ArenaError(f"vote: {label} message {number} needs a role in {', '.join(MESSAGE_ROLES)}")
        if not isinstance(message.get("content"), str):
            raise ArenaError(f"vote: {label} message {number} ({message['role']}) has no text content")
    if messages[-1]["role"] != "assistant":
        raise ArenaError(f"vote: {label} must end with the assistant's answer, not a {messages[-1]['role']} message")
    if not any(m["role"] == "user" for m in messages):
        raise ArenaError(f"vote: {label} has no user message")


class VoteStore:
    """Votes in a SQLite file; safe to share between threads (one connection per operation)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArenaError(f"cannot create folder for votes {self.path.parent}: {exc.strerror}") from None
        self._migrate()

    @classmethod
    def in_data_dir(cls, data_dir: str | Path) -> "VoteStore":
        """The app's store: DATA/votes.sqlite."""
        return cls(DataDir(data_dir).votes_db)

    def add(self, vote: Vote) -> int:
        """Store a vote; fills in `vote.created` (if unset) and `vote.id`, and returns the id."""
        vote.validate()
        created = vote.created or utc_now_iso()
        row = (created, vote.session_id, vote.mode, vote.variant_a, vote.variant_b, vote.winner,
               to_json(vote.conversation_a, "conversation_a"), to_json(vote.conversation_b, "conversation_b"),
               to_json(vote.params, "params"))
        placeholders = ", ".join("?" * len(row))
        with self._connect() as conn, conn:
            cursor = conn.execute(f"INSERT INTO votes ({', '.join(COLUMNS[1:])}) VALUES ({placeholders})", row)
            vote_id = int(cursor.lastrowid)
        vote.created, vote.id = created, vote_id
        return vote_id

    def all(self) -> list[Vote]:
        """Every vote, oldest first."""
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM votes ORDER BY id").fetchall()
        return [self._vote_from_row(row) for row in rows]

    def count(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0])

    def _connect(self) -> ContextManager[sqlite3.Connection]:
        return sqlite_store.connect(self.path, "vote store")

    def _migrate(self) -> None:
        sqlite_store.migrate(self.path, "vote store", SCHEMA, SCHEMA_VERSION)

    def _vote_from_row(self, row: tuple) -> Vote:
        return Vote(**from_json(dict(zip(COLUMNS, row)), ("conversation_a", "conversation_b", "params"), self.path,
                                "vote"))


def from_json(record: dict, keys: tuple[str, ...], path: Path, what: str) -> dict:
    """A row with its JSON columns decoded; an unreadable one is named by file, row id and column."""
    for key in keys:
        try:
            record[key] = json.loads(record[key])
        except ValueError:
            raise ArenaError(f"{path}: {what} {record['id']} has unreadable {key}") from None
    return record


def to_json(value, label: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ArenaError(f"vote: {label} cannot be saved as JSON ({exc})") from None

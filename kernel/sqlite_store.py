"""SQLite files the app shares between threads and processes: votes, training jobs, evaluation answers.

A connection per operation (no lock held between calls), WAL mode so readers never wait for a
writer, and a schema version in `PRAGMA user_version`, so a file from a newer LoRA Arena, or a file
that is not SQLite at all, is refused with one line naming it rather than misread.
"""
from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from .errors import ArenaError

BUSY_TIMEOUT_S = 30.0  # a writer holds the lock for milliseconds; waiting this long means something is stuck


def connect(path: Path, what: str) -> closing[sqlite3.Connection]:
    """A connection closed on leaving `with`; `what` ("vote store") names the file in errors."""
    try:
        return closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_S))
    except sqlite3.Error as exc:
        raise ArenaError(f"cannot open {what} {path}: {exc}") from None


def migrate(path: Path, what: str, schema: str, version: int) -> None:
    """Create the tables on first use; refuse a file from a newer schema or not SQLite at all."""
    try:
        with connect(path, what) as conn:
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found > version:
                raise ArenaError(f"{path}: {what} has schema version {found}, "
                                 f"this program reads up to {version}; upgrade LoRA Arena")
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once, applies to every connection
            if found < version:
                with conn:
                    conn.executescript(schema)
                    conn.execute(f"PRAGMA user_version = {version}")
    except sqlite3.DatabaseError as exc:
        raise ArenaError(f"{path}: not a usable {what} ({exc})") from None

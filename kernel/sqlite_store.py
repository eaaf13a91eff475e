"""SQLite files the app shares between threads and processes: votes, training jobs, evaluation answers.

A connection per operation (no lock held between calls), WAL mode so readers never wait for a
writer, and a schema version in `PRAGMA user_version`, so a file from a newer LoRA Arena, or a file
that is not SQLite at all, is refused with one line naming it rather than misread. A full disk is
said to be full, with the file's name, rather than SQLite's "disk I/O error".
"""
from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path
from typing import Iterator

from .errors import ArenaError, disk_full

BUSY_TIMEOUT_S = 30.0  # a writer holds the lock for milliseconds; waiting this long means something is stuck
SQLITE_FULL, SQLITE_IOERR = 13, 10
LOW_SPACE_BYTES = 1 << 20  # an I/O error with less free than this is the full disk, not a failing one


@contextlib.contextmanager
def connect(path: Path, what: str) -> Iterator[sqlite3.Connection]:
    """A connection closed on leaving `with`; `what` ("vote store") names the file in errors."""
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise ArenaError(f"cannot open {what} {path}: {exc}") from None
    try:
        yield conn
    except sqlite3.OperationalError as exc:
        if out_of_space(exc, Path(path)):
            raise disk_full(path) from None
        raise
    finally:
        conn.close()


def out_of_space(exc: sqlite3.Error, path: Path) -> bool:
    """SQLITE_FULL, or an I/O error (growing the WAL's shared memory file gives SQLITE_IOERR_SHMSIZE)
    on a disk with next to nothing free."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return False
    if code & 0xFF == SQLITE_FULL:
        return True
    try:
        return code & 0xFF == SQLITE_IOERR and shutil.disk_usage(path.parent).free < LOW_SPACE_BYTES
    except OSError:
        return False


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

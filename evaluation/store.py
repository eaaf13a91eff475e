"""Stored evaluation answers: a rerun reuses the answer of an unchanged (variant, case, parameters).

"Unchanged" means the same case content, the same sampling parameters and the same variant
weights: an adapter retrained under the same name gets a new fingerprint, so its answers are redone.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import ContextManager

from kernel import sqlite_store

SCHEMA_VERSION = 1
SCHEMA = """CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY, variant TEXT, case_id TEXT, answer TEXT, stats TEXT, created TEXT);"""


def fingerprint(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def variant_fingerprint(engine, variant: str) -> str:
    """Changes when the variant's weights do: the base for 'base', an adapter's weight file's size and time."""
    return fingerprint(*engine.variant_identity(variant))


class AnswerStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        sqlite_store.migrate(self.path, "answer store", SCHEMA, SCHEMA_VERSION)

    def _connect(self) -> ContextManager[sqlite3.Connection]:
        return sqlite_store.connect(self.path, "answer store")

    def get(self, key: str) -> tuple[str, dict] | None:
        with self._connect() as db:
            row = db.execute("SELECT answer, stats FROM answers WHERE key = ?", (key,)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def put(self, key: str, variant: str, case_id: str, answer: str, stats: dict) -> None:
        with self._lock, self._connect() as db, db:
            db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, datetime('now'))",
                       (key, variant, case_id, answer, json.dumps(stats)))

    def count(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

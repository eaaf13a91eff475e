"""People's 1-to-5 ratings of single answers, kept in DATA/ratings.sqlite beside the votes.

A rating is given under a Compare answer or, once the names are revealed, under an Arena answer.
Like a vote it is cast on what the server showed (arena.ballots: the session's open ballot), never
on what a client sends, and keeps the conversation up to the rated answer, the variant and the
sampling settings. One rating per answer per session: the key is (session, answer), so rating the
same answer again changes it. The Leaderboard shows each variant's mean with a bootstrap 95%
interval and the count; the evaluation report shows the ratings given to a suite's own prompts.
"""
from __future__ import annotations

import math
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kernel import sqlite_store
from kernel.clock import utc_now_iso
from kernel.errors import ArenaError

from .votes import MODES, check_conversation, from_json, to_json

SCHEMA_VERSION = 1
SCORES = (1, 2, 3, 4, 5)
BOOTSTRAP_ROUNDS = 1000
SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    session_id TEXT NOT NULL,
    answer TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('arena', 'compare')),
    variant TEXT NOT NULL,
    score INTEGER NOT NULL CHECK (score BETWEEN 1 AND 5),
    conversation TEXT NOT NULL,
    params TEXT NOT NULL,
    UNIQUE (session_id, answer)
);
CREATE INDEX IF NOT EXISTS ratings_by_variant ON ratings (variant);
"""
COLUMNS = ("id", "created", "updated", "session_id", "answer", "mode", "variant", "score", "conversation", "params")
TABLE_COLUMNS = ["variant", "mean", "ci_low", "ci_high", "ratings"]


@dataclass
class Rating:
    """One person's 1-5 score for one answer. `answer` names it (the ballot and the column it was shown in)."""

    variant: str
    score: int
    conversation: list[dict]  # {role, content} messages up to and including the rated answer
    params: dict = field(default_factory=dict)
    mode: str = "compare"
    session_id: str = ""
    answer: str = ""
    created: str | None = None
    updated: str | None = None
    id: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.score, bool) or not isinstance(self.score, int) or self.score not in SCORES:
            raise ArenaError(f"rating: the score must be a whole number from 1 to 5, got {self.score!r}")
        if not isinstance(self.variant, str) or not self.variant.strip():
            raise ArenaError(f"rating: variant must be a non-empty name, got {self.variant!r}")
        if self.mode not in MODES:
            raise ArenaError(f"rating: mode must be 'arena' or 'compare', got {self.mode!r}")
        check_conversation(self.conversation, "conversation")

    @property
    def user_turns(self) -> list[str]:
        """The user's messages, whitespace-normalised: what a suite's prompt is matched against."""
        return [" ".join(m["content"].split()) for m in self.conversation if m["role"] == "user"]


class RatingStore:
    """Ratings in a SQLite file; safe to share between threads (one connection per operation)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArenaError(f"cannot create folder for ratings {self.path.parent}: {exc.strerror}") from None
        sqlite_store.migrate(self.path, "rating store", SCHEMA, SCHEMA_VERSION)

    def put(self, rating: Rating) -> Rating:
        """Store a rating, or change the session's earlier rating of the same answer; returns it as stored."""
        if not rating.answer:
            raise ArenaError("rating: it must name the answer it rates")
        now = utc_now_iso()
        row = (now, now, rating.session_id, rating.answer, rating.mode, rating.variant, rating.score,
               to_json(rating.conversation, "conversation"), to_json(rating.params, "params"))
        with self._connect() as conn, conn:
            conn.execute(f"INSERT INTO ratings ({', '.join(COLUMNS[1:])}) VALUES ({', '.join('?' * len(row))}) "
                         "ON CONFLICT (session_id, answer) DO UPDATE SET score = excluded.score, "
                         "updated = excluded.updated", row)
            stored = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM ratings WHERE session_id = ? AND answer = ?",
                                  (rating.session_id, rating.answer)).fetchone()
        return self._from_row(stored)

    def all(self) -> list[Rating]:
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM ratings ORDER BY id").fetchall()
        return [self._from_row(row) for row in rows]

    def count(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM ratings").fetchone()[0])

    def _connect(self) -> closing[sqlite3.Connection]:
        return sqlite_store.connect(self.path, "rating store")

    def _from_row(self, row: tuple) -> Rating:
        return Rating(**from_json(dict(zip(COLUMNS, row)), ("conversation", "params"), self.path, "rating"))


def bootstrap_mean(scores: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> tuple[float, float]:
    """2.5th and 97.5th percentiles of the mean over `rounds` resamples (NaN for no scores)."""
    if len(scores) == 0:
        return math.nan, math.nan
    means = np.random.default_rng(seed).choice(scores, size=(rounds, len(scores)), replace=True).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def rating_table(ratings: list[Rating], order: list[str] | None = None) -> pd.DataFrame:
    """One row per variant: mean score, bootstrap 95% interval of the mean, number of ratings.

    Variants in `order` come first in that order (those without ratings are left out), the rest by mean.
    """
    by_variant: dict[str, list[int]] = {}
    for rating in ratings:
        by_variant.setdefault(rating.variant, []).append(rating.score)
    rows = []
    for variant, scores in by_variant.items():
        values = np.array(scores, dtype=float)
        low, high = bootstrap_mean(values)
        rows.append({"variant": variant, "mean": float(values.mean()), "ci_low": low, "ci_high": high,
                     "ratings": len(values)})
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    rank = {name: i for i, name in enumerate(order or [])}
    table["_order"] = [rank.get(v, len(rank)) for v in table["variant"]]
    table = table.sort_values(["_order", "mean", "variant"], ascending=[True, False, True])
    return table.drop(columns="_order").reset_index(drop=True)


def ratings_of_prompts(ratings: list[Rating], prompts: list[list[str]]) -> list[Rating]:
    """The ratings of answers to exactly these conversations (each a list of the user's messages)."""
    wanted = {tuple(" ".join(p.split()) for p in turns) for turns in prompts}
    return [r for r in ratings if tuple(r.user_turns) in wanted]

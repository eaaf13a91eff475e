"""The one vote rule, for blind Arena battles and Compare turns alike.

A vote is cast on a ballot the server opened when the answers were shown, never on what a client
sends back: the variants, the conversations and the sampling settings come from the ballot. Each
ballot takes one vote (an Arena battle is one ballot over all its turns; each answered Compare turn
is a new one), and each session casts at most `per_minute` votes a minute. Replaying a vote request,
or the session's state, finds the ballot already used.

A choice is ("best", column) or "tie" or "both_bad"; it becomes pairwise Votes: the best column beats
every other column, a tie or "all bad" holds for every pair.

A 1-to-5 rating of one answer goes through the same ballot (`rate`): one per answer per session, stored
with `arena.ratings` and changeable while the ballot is open; an Arena answer is rated after the vote.
"""
from __future__ import annotations

import collections
import secrets
import threading
import time
from dataclasses import dataclass, field

from kernel.errors import ArenaError

from .ratings import Rating, RatingStore
from .votes import Vote, VoteStore

MODES = ("arena", "compare")
MAX_SESSIONS = 10_000  # ballots of the sessions seen longest ago are forgotten beyond this
WINDOW_S = 60.0


@dataclass
class Ballot:
    mode: str
    variants: list[str]
    conversations: list[list[dict]]  # {role, content} messages each side saw, ending with its answer
    params: dict
    voted: bool = False
    id: str = field(default_factory=lambda: secrets.token_hex(8))  # names its answers in ratings


def pairwise_votes(ballot: Ballot, choice, session: str) -> list[Vote]:
    """The votes one choice stands for: ("best", i) beats each other side; "tie"/"both_bad" for every pair."""
    best = choice[1] if isinstance(choice, tuple) and choice[0] == "best" else None
    if best is None and choice not in ("tie", "both_bad"):
        raise ArenaError(f"vote: unknown choice {choice!r}")
    if best is not None and not 0 <= best < len(ballot.variants):
        raise ArenaError(f"vote: there is no column {best + 1} in this comparison")
    votes = []
    for i in range(len(ballot.variants)):
        for j in range(i + 1, len(ballot.variants)):
            if best is None:
                winner = choice
            elif best in (i, j):
                winner = "a" if best == i else "b"
            else:
                continue  # neither side was picked: this pair says nothing
            votes.append(Vote(variant_a=ballot.variants[i], variant_b=ballot.variants[j], winner=winner,
                              conversation_a=ballot.conversations[i], conversation_b=ballot.conversations[j],
                              params=ballot.params, mode=ballot.mode, session_id=session))
    return votes


class VoteRule:
    """Ballots per (session, mode), one vote each, and a per-session rate limit; votes go to `store`."""

    def __init__(self, store: VoteStore, per_minute: int = 6, clock=time.monotonic,
                 ratings: RatingStore | None = None):
        self.store = store
        self.ratings = ratings
        self.per_minute = per_minute
        self.clock = clock
        self._ballots: collections.OrderedDict[tuple[str, str], Ballot] = collections.OrderedDict()
        self._cast_times: dict[str, collections.deque] = {}
        self._lock = threading.Lock()

    def show(self, session: str, ballot: Ballot, new: bool) -> None:
        """Answers were shown: `new` opens a fresh ballot (a Compare turn, an Arena battle's first turn);
        otherwise the session's current battle goes on, which a cast vote has ended."""
        if ballot.mode not in MODES:
            raise ArenaError(f"vote: mode must be one of {', '.join(MODES)}")
        with self._lock:
            if not new:
                self._refuse_if_over(session, ballot.mode)
            self._ballots[(session, ballot.mode)] = ballot
            self._ballots.move_to_end((session, ballot.mode))
            while len(self._ballots) > MAX_SESSIONS:
                self._ballots.popitem(last=False)

    def check_going_on(self, session: str, mode: str) -> None:
        """Before answering the next turn of a battle: refused once it has been voted on."""
        with self._lock:
            self._refuse_if_over(session, mode)

    def _refuse_if_over(self, session: str, mode: str) -> None:
        current = self._ballots.get((session, mode))
        if current is not None and current.voted:
            raise ArenaError("this battle has been voted on: press New battle for another")

    def close(self, session: str, mode: str) -> None:
        """The answers changed or were cleared: nothing of theirs can be voted on any more."""
        with self._lock:
            self._ballots.pop((session, mode), None)

    def forget(self, session: str) -> None:
        """The session ended (tab closed)."""
        with self._lock:
            for mode in MODES:
                self._ballots.pop((session, mode), None)
            self._cast_times.pop(session, None)

    def cast(self, session: str, mode: str, choice) -> list[Vote]:
        """Store the votes `choice` stands for on the session's open ballot; each refusal is one line."""
        with self._lock:
            ballot = self._ballots.get((session, mode))
            if ballot is None or not ballot.conversations:
                raise ArenaError("ask something first, then vote")
            if ballot.voted:
                raise ArenaError("you already voted on these answers: ask something new to vote again")
            if not all(any(m["role"] == "assistant" and m["content"] for m in c) for c in ballot.conversations):
                raise ArenaError("every side needs an answer to vote on")
            self._take_rate(session)
            votes = pairwise_votes(ballot, choice, session)
            ballot.voted = True
        try:
            for vote in votes:
                self.store.add(vote)
        except BaseException:
            ballot.voted = False  # nothing was lost: the same vote can be cast again
            raise
        return votes

    def _take_rate(self, session: str) -> None:
        now = self.clock()
        if session not in self._cast_times and len(self._cast_times) >= MAX_SESSIONS:
            self._cast_times.pop(next(iter(self._cast_times)))  # the session seen longest ago
        times = self._cast_times.setdefault(session, collections.deque())
        while times and now - times[0] >= WINDOW_S:
            times.popleft()
        if len(times) >= self.per_minute:
            wait = WINDOW_S - (now - times[0])
            raise ArenaError(f"at most {self.per_minute} votes a minute from one session: try again in {wait:.0f} s")
        times.append(now)

    def rate(self, session: str, mode: str, column: int, score) -> Rating:
        """Store (or change) the session's 1-5 rating of one answer of its open ballot."""
        if self.ratings is None:
            raise ArenaError("ratings are not kept on this server")
        with self._lock:
            ballot = self._ballots.get((session, mode))
            if ballot is None or not ballot.conversations:
                raise ArenaError("ask something first, then rate the answer")
            if mode == "arena" and not ballot.voted:
                raise ArenaError("rate the arena answers after your vote, once their names are shown")
            if not 0 <= column < len(ballot.variants):
                raise ArenaError(f"there is no answer {column + 1} to rate")
            conversation = ballot.conversations[column]
        if not conversation or conversation[-1]["role"] != "assistant" or not conversation[-1]["content"]:
            raise ArenaError("this answer is empty: there is nothing to rate")
        return self.ratings.put(Rating(ballot.variants[column], score, conversation, ballot.params, mode=mode,
                                       session_id=session, answer=f"{ballot.id}/{column}"))

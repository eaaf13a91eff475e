"""arena.ballots: the one vote rule both Arena and Compare call, on a real SQLite vote store."""
from __future__ import annotations

import pytest

from arena.ballots import Ballot, VoteRule, pairwise_votes
from arena.votes import VoteStore
from kernel.errors import ArenaError


def chat(answer: str) -> list[dict]:
    return [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": answer}]


def ballot(mode="compare", variants=("base", "a1", "a2")) -> Ballot:
    return Ballot(mode, list(variants), [chat(f"answer of {v}") for v in variants], {"max_new_tokens": 8})


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def rule(tmp_path):
    return VoteRule(VoteStore(tmp_path / "votes.sqlite"), per_minute=3, clock=Clock())


def test_best_beats_every_other_column_and_a_tie_holds_for_every_pair():
    best = pairwise_votes(ballot(), ("best", 1), "s")
    assert [(v.variant_a, v.variant_b, v.winner) for v in best] == [("base", "a1", "b"), ("a1", "a2", "a")]
    assert best[0].conversation_b[-1]["content"] == "answer of a1"
    tie = pairwise_votes(ballot(), "tie", "s")
    assert [(v.variant_a, v.variant_b, v.winner) for v in tie] == [("base", "a1", "tie"), ("base", "a2", "tie"),
                                                                   ("a1", "a2", "tie")]
    arena = pairwise_votes(ballot("arena", ("x", "y")), ("best", 0), "s")
    assert [(v.variant_a, v.variant_b, v.winner, v.mode) for v in arena] == [("x", "y", "a", "arena")]
    with pytest.raises(ArenaError, match="no column 4"):
        pairwise_votes(ballot(), ("best", 3), "s")


def test_one_vote_per_ballot_and_a_new_turn_is_a_new_ballot(rule):
    with pytest.raises(ArenaError, match="ask something first"):
        rule.cast("s1", "compare", "tie")
    rule.show("s1", ballot(), new=True)
    assert len(rule.cast("s1", "compare", ("best", 0))) == 2
    with pytest.raises(ArenaError, match="already voted"):
        rule.cast("s1", "compare", "tie")
    with pytest.raises(ArenaError, match="ask something first"):
        rule.cast("s2", "compare", "tie")  # another session has no ballot of its own
    rule.show("s1", ballot(), new=True)
    rule.cast("s1", "compare", "both_bad")
    assert rule.store.count() == 2 + 3


def test_a_battle_is_one_ballot_over_its_turns_and_ends_with_the_vote(rule):
    rule.show("s1", ballot("arena", ("x", "y")), new=True)
    rule.show("s1", ballot("arena", ("x", "y")), new=False)  # a second turn of the same battle
    rule.cast("s1", "arena", ("best", 1))
    with pytest.raises(ArenaError, match="press New battle"):
        rule.check_going_on("s1", "arena")
    with pytest.raises(ArenaError, match="press New battle"):
        rule.show("s1", ballot("arena", ("x", "y")), new=False)
    rule.close("s1", "arena")  # New battle
    rule.check_going_on("s1", "arena")


def test_an_unanswered_side_cannot_be_voted_on(rule):
    empty = Ballot("compare", ["base", "a1"], [chat("yes"), chat("")], {})
    rule.show("s1", empty, new=True)
    with pytest.raises(ArenaError, match="every side needs an answer"):
        rule.cast("s1", "compare", "tie")


def test_votes_per_minute_per_session(rule):
    for _ in range(3):
        rule.show("s1", ballot(), new=True)
        rule.cast("s1", "compare", "tie")
    rule.show("s1", ballot(), new=True)
    with pytest.raises(ArenaError, match="at most 3 votes a minute from one session: try again in 60 s"):
        rule.cast("s1", "compare", "tie")
    rule.show("s2", ballot(), new=True)
    rule.cast("s2", "compare", "tie")  # another session has its own count
    rule.clock.now = 61.0
    rule.cast("s1", "compare", "tie")  # the refused ballot was not used up

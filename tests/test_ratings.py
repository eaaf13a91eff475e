"""1-to-5 ratings (arena.ratings) cast through the vote rule's ballots, on a real SQLite store, and what the
Leaderboard and the evaluation report make of them."""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from arena.ballots import Ballot, VoteRule
from arena.ratings import Rating, RatingStore, rating_table, ratings_of_prompts
from arena.votes import VoteStore
from evaluation.runner import EvalConfig, run_evaluation
from evaluation.report import write_report
from kernel.errors import ArenaError
from tests.test_vote_rule import ballot, chat


@pytest.fixture
def rule(tmp_path):
    return VoteRule(VoteStore(tmp_path / "votes.sqlite"), ratings=RatingStore(tmp_path / "ratings.sqlite"))


def test_one_rating_per_answer_per_session_and_rating_again_changes_it(rule):
    rule.show("s1", ballot(), new=True)
    rule.rate("s1", "compare", 1, 2)
    changed = rule.rate("s1", "compare", 1, 5)
    rule.rate("s1", "compare", 0, 3)
    stored = rule.ratings.all()
    assert [(r.variant, r.score, r.session_id) for r in stored] == [("a1", 5, "s1"), ("base", 3, "s1")]
    assert changed.score == 5 and changed.created <= changed.updated
    assert stored[0].conversation == chat("answer of a1") and stored[0].params == {"max_new_tokens": 8}
    with pytest.raises(ArenaError, match="ask something first, then rate"):
        rule.rate("s2", "compare", 1, 1)  # another session cannot rate what s1 was shown
    rule.show("s1", ballot(), new=True)  # the next turn: new answers, rated on their own
    rule.rate("s1", "compare", 1, 4)
    assert [r.score for r in rule.ratings.all()] == [5, 3, 4]


def test_refusals_each_say_why_in_one_line(rule, tmp_path):
    rule.show("s", ballot("arena", ("x", "y")), new=True)
    with pytest.raises(ArenaError, match="after your vote"):
        rule.rate("s", "arena", 0, 4)  # blind: names not revealed yet
    rule.cast("s", "arena", "tie")
    assert rule.rate("s", "arena", 0, 4).variant == "x"  # after the reveal, rating is open
    for column, score, message in [(2, 4, "no answer 3"), (0, 6, "whole number from 1 to 5"),
                                   (0, "4", "whole number from 1 to 5"), (0, True, "whole number from 1 to 5")]:
        with pytest.raises(ArenaError, match=message):
            rule.rate("s", "arena", column, score)
    rule.close("s", "arena")  # New battle
    with pytest.raises(ArenaError, match="ask something first"):
        rule.rate("s", "arena", 0, 4)
    empty = Ballot("compare", ["base", "a1"], [chat("fine"), chat("")], {})
    rule.show("s", empty, new=True)
    with pytest.raises(ArenaError, match="nothing to rate"):
        rule.rate("s", "compare", 1, 3)
    with pytest.raises(ArenaError, match="not kept"):
        VoteRule(VoteStore(tmp_path / "v2.sqlite")).rate("s", "compare", 0, 3)


def test_the_store_keeps_one_row_per_answer_and_refuses_bad_rows(tmp_path):
    store = RatingStore(tmp_path / "ratings.sqlite")
    for score in (1, 2, 3):
        store.put(Rating("a1", score, chat("x"), mode="compare", session_id="s", answer="b/0"))
    assert store.count() == 1 and store.all()[0].score == 3
    with sqlite3.connect(tmp_path / "ratings.sqlite") as conn:
        with pytest.raises(sqlite3.IntegrityError):  # the file itself refuses a score out of range
            conn.execute("INSERT INTO ratings (created, updated, session_id, answer, mode, variant, score, "
                         "conversation, params) VALUES ('', '', 's', 'b/1', 'compare', 'a1', 9, '[]', '{}')")
    with pytest.raises(ArenaError, match="must end with the assistant's answer"):
        Rating("a1", 3, [{"role": "user", "content": "Q?"}])
    (tmp_path / "junk.sqlite").write_text("not a database " * 50)
    with pytest.raises(ArenaError, match="not a usable rating store"):
        RatingStore(tmp_path / "junk.sqlite")


def test_rating_table_means_intervals_and_counts():
    ratings = [Rating("tuned", s, chat("x"), answer=str(i)) for i, s in enumerate([4, 5, 4, 3, 4, 5, 4, 4])]
    ratings += [Rating("base", 2, chat("x"), answer="b")]
    table = rating_table(ratings, order=["base", "tuned"])
    assert table["variant"].tolist() == ["base", "tuned"]
    tuned = table.iloc[1]
    assert tuned["mean"] == pytest.approx(np.mean([4, 5, 4, 3, 4, 5, 4, 4])) and tuned["ratings"] == 8
    assert 3 <= tuned["ci_low"] < tuned["mean"] < tuned["ci_high"] <= 5
    base = table.iloc[0]
    assert base["ci_low"] == base["ci_high"] == 2.0 and base["ratings"] == 1  # one rating: no width at all


def test_the_report_shows_ratings_given_to_the_suites_own_prompts(tmp_path, tiny_engine):
    suite = tmp_path / "suite.jsonl"
    suite.write_text("".join(json.dumps({"id": n, "category": "c", "prompt": prompt,
                                         "check": {"type": "contains", "value": "x"}}) + "\n"
                             for n, prompt in enumerate(["Name a colour.", "Count to three."])), encoding="utf-8")
    store = RatingStore(tmp_path / "ratings.sqlite")
    asked = lambda q: [{"role": "user", "content": q}, {"role": "assistant", "content": "ok"}]  # noqa: E731
    for n, (variant, prompt, score) in enumerate([("a1", "Name  a colour.", 4), ("a1", "Count to three.", 2),
                                                  ("base", "Name a colour.", 1), ("a1", "Something else", 5)]):
        store.put(Rating(variant, score, asked(prompt), session_id=str(n), answer="x"))
    assert len(ratings_of_prompts(store.all(), [["Name a colour."], ["Count to three."]])) == 3
    run = run_evaluation(tiny_engine, EvalConfig(str(suite), ["base", "a1"], max_new_tokens=2), tmp_path)
    report = write_report(run)["markdown"].read_text()
    section = report.split("## People's ratings of these prompts")[1].split("##")[0]
    assert "| base | 1.00 | [1.00, 1.00] | 1 |" in section
    assert "| a1 | 3.00 |" in section and "| 2 |" in section  # 4 and 2; the other prompt's 5 is not counted

"""Votes kept in SQLite, the Bradley-Terry leaderboard and head-to-head table, and preference-pair exports."""
from __future__ import annotations

import json
import sqlite3
import threading

import numpy as np
import pytest

from tests.helpers import shared_data
from matplotlib.figure import Figure

from arena.export import export_jsonl, export_sharegpt, read_preference_pairs
from arena.rating import head_to_head, head_to_head_figure, leaderboard
from arena.votes import SCHEMA_VERSION, Vote, VoteStore
from kernel.errors import ArenaError

DEMO = shared_data() / "dpo_en_demo.json"


def chat(question: str, answer: str, earlier: list[dict] | None = None) -> list[dict]:
    return (earlier or []) + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def vote(a: str, b: str, winner: str, **extra) -> Vote:
    return Vote(a, b, winner, chat("Hi?", f"answer from {a}"), chat("Hi?", f"answer from {b}"), **extra)


def battles(a: str, b: str, a_wins: int, b_wins: int, ties: int = 0) -> list[Vote]:
    return [vote(a, b, "a")] * a_wins + [vote(a, b, "b")] * b_wins + [vote(a, b, "tie")] * ties


def chain_votes() -> list[Vote]:
    """A beats B 8 of 10, B beats C 8 of 10: clearly A > B > C."""
    return battles("A", "B", 8, 2) + battles("B", "C", 8, 2)


# --- the vote store -------------------------------------------------------------------------------------------

def test_votes_survive_reopening_the_file(tmp_path):
    path = tmp_path / "data" / "votes.sqlite"
    store = VoteStore(path)
    first = Vote("base", "pirate", "b", chat("Capital of France?", "Paris."),
                 chat("Capital of France?", "Arr, Paris!"), params={"temperature": 0.7, "seed": 3},
                 mode="arena", session_id="s1")
    earlier = chat("Hello", "Hi there")
    second = Vote("pirate", "base", "both_bad", chat("And Spain?", "Madrid, arr", earlier),
                  chat("And Spain?", "Madrid", earlier), mode="compare", session_id="s2")
    assert store.add(first) == 1 and store.add(second) == 2
    assert first.id == 1 and first.created.endswith("+00:00")

    reopened = VoteStore(path)
    assert reopened.count() == 2
    back = reopened.all()
    assert [v.id for v in back] == [1, 2]
    assert back[0] == first
    assert back[1].conversation_a == second.conversation_a and len(back[1].conversation_a) == 4
    assert back[1].winner == "both_bad" and back[1].mode == "compare" and back[1].session_id == "s2"
    assert back[0].params == {"temperature": 0.7, "seed": 3}


def test_store_is_versioned_and_in_wal_mode(tmp_path):
    store = VoteStore.in_data_dir(tmp_path)
    assert store.path == tmp_path / "votes.sqlite"
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_votes_from_many_threads_are_all_kept(tmp_path):
    store = VoteStore(tmp_path / "votes.sqlite")
    threads = [threading.Thread(target=lambda: [store.add(vote("A", "B", "a")) for _ in range(10)])
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.count() == 80
    assert sorted(v.id for v in store.all()) == list(range(1, 81))


def test_bad_winner_is_refused_with_a_clear_message(tmp_path):
    store = VoteStore(tmp_path / "votes.sqlite")
    with pytest.raises(ArenaError, match=r"winner must be one of a, b, tie, both_bad, got 'c'"):
        store.add(vote("A", "B", "c"))
    good = vote("A", "B", "a")
    good.winner = "left"  # changed after it was built: add() checks again
    with pytest.raises(ArenaError, match="winner"):
        store.add(good)
    assert store.count() == 0


@pytest.mark.parametrize("a, b", [("", "B"), ("A", "   ")])
def test_empty_variant_name_is_refused(a, b):
    with pytest.raises(ArenaError, match="variant_[ab] must be a non-empty variant name"):
        vote(a, b, "a")


def test_conversation_must_end_with_the_judged_answer():
    with pytest.raises(ArenaError, match="conversation_b must end with the assistant's answer"):
        Vote("A", "B", "a", chat("q", "x"), [{"role": "user", "content": "q"}])


def test_a_file_that_is_not_a_vote_store_is_named(tmp_path):
    path = tmp_path / "votes.sqlite"
    path.write_text("not a database at all, just text" * 100)
    with pytest.raises(ArenaError, match="votes.sqlite: not a usable vote store"):
        VoteStore(path)


def test_a_store_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "votes.sqlite"
    VoteStore(path)
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ArenaError, match="schema version 2, this program reads up to 1"):
        VoteStore(path)


# --- the leaderboard ------------------------------------------------------------------------------------------

def test_leaderboard_counts_and_order():
    board = leaderboard(chain_votes())
    assert list(board.columns) == ["rank", "variant", "score", "ci_low", "ci_high", "battles", "wins", "losses",
                                   "ties", "win_rate"]
    assert board["variant"].tolist() == ["A", "B", "C"]
    rows = board.set_index("variant")
    assert rows.loc["A", ["battles", "wins", "losses", "ties"]].tolist() == [10, 8, 2, 0]
    assert rows.loc["B", ["battles", "wins", "losses", "ties"]].tolist() == [20, 10, 10, 0]
    assert rows.loc["C", ["battles", "wins", "losses", "ties"]].tolist() == [10, 2, 8, 0]
    assert rows["win_rate"].tolist() == [0.8, 0.5, 0.2]
    assert rows.loc["A", "score"] > rows.loc["B", "score"] > rows.loc["C", "score"]
    assert np.all(board["ci_low"] <= board["score"]) and np.all(board["score"] <= board["ci_high"])
    assert np.all(board["ci_low"] < board["ci_high"])
    assert board["score"].mean() == pytest.approx(1000.0)  # the average variant is 1000
    assert board["rank"].iloc[0] == 1 and board["rank"].is_monotonic_increasing


def test_score_gap_matches_the_observed_odds():
    # 8 wins in 10 is odds of 4:1, which is 400 * log10(4) = 241 Elo points; the small prior pulls it in a bit
    rows = leaderboard(battles("A", "B", 80, 20)).set_index("variant")
    assert rows.loc["A", "score"] - rows.loc["B", "score"] == pytest.approx(400 * np.log10(4), abs=3)


def test_leaderboard_is_reproducible():
    assert leaderboard(chain_votes()).equals(leaderboard(chain_votes()))


def test_ties_and_both_bad_count_half():
    votes = battles("A", "B", 1, 1, ties=1) + [vote("A", "B", "both_bad")]
    rows = leaderboard(votes).set_index("variant")
    assert rows.loc["A", ["battles", "wins", "losses", "ties"]].tolist() == [4, 1, 1, 2]
    assert rows.loc["A", "win_rate"] == 0.5
    assert rows.loc["A", "score"] == pytest.approx(rows.loc["B", "score"])


def test_only_wins_still_gives_a_finite_score():
    rows = leaderboard(battles("A", "B", 6, 0)).set_index("variant")
    assert np.isfinite(rows["score"]).all() and rows.loc["A", "score"] > rows.loc["B", "score"]


def test_a_variant_against_itself_is_counted_but_does_not_move_scores():
    plain = leaderboard(chain_votes()).set_index("variant")
    with_self = leaderboard(chain_votes() + [vote("A", "A", "a")] * 5).set_index("variant")
    assert with_self.loc["A", "battles"] == 15 and with_self.loc["A", "ties"] == 5
    assert with_self["score"].to_dict() == pytest.approx(plain["score"].to_dict())
    alone = leaderboard([vote("X", "X", "b")])
    assert alone["variant"].tolist() == ["X"] and alone["battles"].tolist() == [1]
    assert np.isnan(alone["score"].iloc[0])


def test_no_votes_gives_empty_tables():
    assert leaderboard([]).empty and list(leaderboard([]).columns)[:2] == ["rank", "variant"]
    assert head_to_head([]).empty
    assert isinstance(head_to_head_figure(head_to_head([])), Figure)


def test_head_to_head_values():
    table = head_to_head(chain_votes() + battles("A", "C", 1, 0, ties=1) + [vote("B", "B", "a")])
    assert table.index.tolist() == ["A", "B", "C"] and table.columns.tolist() == ["A", "B", "C"]
    assert table.loc["A", "B"] == 0.8 and table.loc["B", "A"] == pytest.approx(0.2)
    assert table.loc["B", "C"] == 0.8 and table.loc["C", "B"] == pytest.approx(0.2)
    assert table.loc["A", "C"] == 0.75 and table.loc["C", "A"] == 0.25
    assert np.isnan(np.diag(table.to_numpy())).all()
    assert np.isnan(head_to_head(chain_votes()).loc["A", "C"])  # never met


def test_head_to_head_figure_shows_the_numbers(tmp_path):
    figure = head_to_head_figure(head_to_head(chain_votes()))
    texts = {text.get_text() for text in figure.axes[0].texts}
    assert {"0.80", "0.20"} <= texts
    figure.savefig(tmp_path / "h2h.png")
    assert (tmp_path / "h2h.png").stat().st_size > 1000


# --- preference-pair exports ----------------------------------------------------------------------------------

def export_votes() -> list[Vote]:
    earlier_a = [{"role": "system", "content": "Be brief."}] + chat("Hello", "Hi from base")
    earlier_b = [{"role": "system", "content": "Be brief."}] + chat("Hello", "Ahoy from pirate")
    return [
        Vote("base", "pirate", "a", chat("2+2?", "4"), chat("2+2?", "Arr, five")),
        Vote("base", "pirate", "b", chat("Name a sea", "Water", earlier_a),
             chat("Name a sea", "The Caribbean!", earlier_b)),
        Vote("base", "pirate", "tie", chat("q", "x"), chat("q", "y")),
        Vote("base", "pirate", "both_bad", chat("q", "x"), chat("q", "y")),
        Vote("base", "base", "a", chat("q", "same"), chat("q", "same")),  # identical answers: nothing to prefer
    ]


def test_jsonl_export_reads_back(tmp_path):
    result = export_jsonl(export_votes(), tmp_path / "out" / "pairs.jsonl")
    assert (result.written, result.skipped) == (2, 3)
    lines = (tmp_path / "out" / "pairs.jsonl").read_text(encoding="utf-8").splitlines()
    raw = [json.loads(line) for line in lines]
    assert raw[0] == {"prompt": "2+2?", "chosen": "4", "rejected": "Arr, five", "history": [],
                      "chosen_variant": "base", "rejected_variant": "pirate"}
    assert raw[1]["prompt"] == "Name a sea" and raw[1]["chosen"] == "The Caribbean!"
    assert raw[1]["rejected"] == "Water" and raw[1]["chosen_variant"] == "pirate"
    assert [m["role"] for m in raw[1]["history"]] == ["system", "user", "assistant"]
    assert raw[1]["history"][2]["content"] == "Ahoy from pirate"  # the winner's own earlier answer
    pairs = read_preference_pairs(result.path)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("2+2?", "4", "Arr, five"),
                                                                 ("Name a sea", "The Caribbean!", "Water")]
    assert pairs[1].history == raw[1]["history"]


def test_sharegpt_export_matches_the_demo_format(tmp_path):
    result = export_sharegpt(export_votes(), tmp_path / "pairs.json")
    assert (result.written, result.skipped) == (2, 3)
    records = json.loads(result.path.read_text(encoding="utf-8"))
    demo = json.loads(DEMO.read_text(encoding="utf-8"))[0]
    for record in records:
        assert record.keys() == demo.keys()
        assert record["chosen"].keys() == demo["chosen"].keys() and record["chosen"]["from"] == demo["chosen"]["from"]
        assert record["rejected"]["from"] == demo["rejected"]["from"] == "gpt"
        assert all(turn.keys() == demo["conversations"][0].keys() for turn in record["conversations"])
    assert records[0]["conversations"] == [{"from": "human", "value": "2+2?"}]
    assert [t["from"] for t in records[1]["conversations"]] == ["system", "human", "gpt", "human"]
    assert (records[1]["chosen"]["value"], records[1]["rejected"]["value"]) == ("The Caribbean!", "Water")
    pairs = read_preference_pairs(result.path)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("2+2?", "4", "Arr, five"),
                                                                 ("Name a sea", "The Caribbean!", "Water")]
    assert [m["role"] for m in pairs[1].history] == ["system", "user", "assistant"]


def test_reads_the_llama_factory_demo_file():
    pairs = read_preference_pairs(DEMO)
    raw = json.loads(DEMO.read_text(encoding="utf-8"))
    assert len(pairs) == len(raw) == 300
    assert pairs[0].prompt == raw[0]["conversations"][-1]["value"] and pairs[0].history == []
    assert pairs[0].chosen == raw[0]["chosen"]["value"] and pairs[0].rejected == raw[0]["rejected"]["value"]
    assert all(p.chosen != p.rejected for p in pairs)


def test_export_replaces_an_old_file_whole(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("old contents\n" * 50)
    export_jsonl(export_votes()[:1], path)
    assert len(path.read_text().splitlines()) == 1 and not list(tmp_path.glob(".pairs.jsonl.*"))


def test_bad_pair_files_are_named_with_line_or_record(tmp_path):
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p", "chosen": 3}\n')
    with pytest.raises(ArenaError, match=r"bad.jsonl line 2: 'chosen' must be text"):
        read_preference_pairs(jsonl)
    array = tmp_path / "bad.json"
    array.write_text(json.dumps([{"conversations": [{"from": "gpt", "value": "hi"}],
                                  "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}}]))
    with pytest.raises(ArenaError, match=r"bad.json record 1: the last conversations turn must be from 'human'"):
        read_preference_pairs(array)
    with pytest.raises(ArenaError, match="no such file"):
        read_preference_pairs(tmp_path / "missing.json")

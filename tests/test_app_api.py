"""The launched web app driven through gradio_client: the real server, engine and SQLite."""
from __future__ import annotations

import json
import threading
import time

import pytest
from gradio_client import Client

from arena.export import read_preference_pairs
from arena.votes import Vote, VoteStore
from models import Engine, EngineConfig, SamplingParams
from chat.turns import today
from chat.search import SearchResult, WebSearch, augment_question
from tests.static_search import StaticProvider
from tests.app_client import call_args, text_of

FRANCE = "What is the capital of France?"
FOLLOW_UP = "What is the title of source [1]?"  # sent without the sources, the model makes a title up
# What /compare_send returns (session state is kept by the client, not returned):
SOURCES, CHAT_1, CHAT_2, STATS_1, STATS_2 = 1, 3, 4, 7, 8


@pytest.fixture(scope="module")
def real_app(launch_app, real_engine):
    ctx, url = launch_app(real_engine)
    return ctx, Client(url, verbose=False)


def compare(client, message, **widgets):
    args = call_args(client, "/compare_send", Message=message, **widgets)
    job = client.submit(*args, api_name="/compare_send")
    job.result(timeout=120)
    return job.outputs()


def test_compare_streams_into_both_columns_and_base_is_the_base(real_app, real_engine):
    _, client = real_app
    chunks = compare(client, FRANCE, **{"Column 1": "base", "Column 2": "pirate", "Max new tokens": 24})
    assert len(chunks) > 2, "answers should arrive in pieces, not at once"
    final = chunks[-1]
    base_chat, pirate_chat = final[CHAT_1], final[CHAT_2]
    expected = real_engine.generate("base", FRANCE, params=SamplingParams(max_new_tokens=24)).text
    assert text_of(base_chat[-1]) == expected
    assert "Arr" in text_of(pirate_chat[-1])
    assert "tok/s" in final[STATS_1] and "tok/s" in final[STATS_2]


def test_a_compare_vote_is_stored(real_app):
    ctx, client = real_app
    compare(client, "Name a color.", **{"Column 1": "base", "Column 2": "pirate", "Max new tokens": 12})
    before = ctx.votes.count()
    status = client.predict(api_name="/compare_vote_best_2")  # about the answers shown, nothing else
    assert "Vote saved" in status
    vote = ctx.votes.all()[-1]
    assert ctx.votes.count() == before + 1
    assert (vote.variant_a, vote.variant_b, vote.winner, vote.mode) == ("base", "pirate", "b", "compare")
    assert vote.conversation_b[-1]["role"] == "assistant" and "Arr" in vote.conversation_b[-1]["content"]


def test_arena_hides_names_until_the_vote(real_app):
    ctx, client = real_app
    client.predict(api_name="/arena_new_battle")
    args = call_args(client, "/arena_send", Message=FRANCE, **{"Max new tokens": 16})
    job = client.submit(*args, api_name="/arena_send")
    final = job.result(timeout=120)
    chat_a, chat_b = final[1], final[2]
    assert text_of(chat_a[-1]) and text_of(chat_b[-1])
    reveal = client.predict(api_name="/arena_vote_b")[0]
    vote = ctx.votes.all()[-1]
    assert vote.mode == "arena" and vote.winner == "b"
    assert {vote.variant_a, vote.variant_b} == {"base", "pirate"}
    assert f"Model A was **{vote.variant_a}**" in reveal and f"Model B was **{vote.variant_b}**" in reveal


def test_two_sessions_sending_at_once_both_stream_before_either_finishes(real_app):
    """The batched backend's point: a second user does not wait for the first user's whole answer."""
    _, first = real_app
    clients = [first, Client(first.src, verbose=False)]
    times: dict[int, dict[str, float]] = {0: {}, 1: {}}
    barrier = threading.Barrier(2)

    def send(i: int) -> None:
        args = call_args(clients[i], "/compare_send", Message="Write a long story about a dragon.",
                         **{"Column 1": "base", "Column 2": "pirate", "Max new tokens": 64})
        barrier.wait()
        job = clients[i].submit(*args, api_name="/compare_send")
        for chunk in job:
            if "first" not in times[i] and text_of(chunk[CHAT_1][-1]):
                times[i]["first"] = time.perf_counter()
        times[i]["end"] = time.perf_counter()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert all("first" in t for t in times.values()), times
    assert max(t["first"] for t in times.values()) < min(t["end"] for t in times.values())


def test_two_sessions_keep_their_own_conversations(real_app):
    _, first = real_app
    second = Client(first.src, verbose=False)
    first.predict(api_name="/compare_clear")
    compare(first, "My name is Ada.", **{"Max new tokens": 8})
    chunks = compare(second, "Hello!", **{"Max new tokens": 8})
    assert [text_of(m) for m in chunks[-1][CHAT_1] if m["role"] == "user"] == ["Hello!"]
    again = compare(first, "What is my name?", **{"Max new tokens": 8})
    assert [text_of(m) for m in again[-1][CHAT_1] if m["role"] == "user"] == ["My name is Ada.", "What is my name?"]


def test_search_offline_shows_a_notice_and_still_answers(real_app):
    _, client = real_app
    final = compare(client, FRANCE, **{"Web search": True, "Max new tokens": 12})[-1]
    assert "Web search failed" in final[SOURCES] or "timed out" in final[SOURCES]
    assert text_of(final[CHAT_1][-1]) and text_of(final[CHAT_2][-1])


def test_search_sources_go_to_every_column(launch_app, real_engine):
    provider = StaticProvider({"capital of france": [SearchResult("Paris - Wikipedia", "https://en.wikipedia.org/wiki/Paris",
                                                                   "Paris is the capital and largest city of France.")]})
    _, url = launch_app(real_engine, search=WebSearch(provider))
    client = Client(url, verbose=False)
    final = compare(client, "capital of France", **{"Web search": True, "Max new tokens": 12})[-1]
    assert "[Paris - Wikipedia](https://en.wikipedia.org/wiki/Paris)" in final[SOURCES]
    assert provider.calls == 1  # one search for both columns


def test_a_follow_up_still_sees_the_first_turns_sources_but_chat_and_vote_keep_the_words(launch_app, real_engine):
    paris = SearchResult("Paris - Wikipedia", "https://en.wikipedia.org/wiki/Paris",
                         "Paris is the capital and largest city of France.")
    search = WebSearch(StaticProvider({"capital of france": [paris]}))
    ctx, url = launch_app(real_engine, search=search)
    client = Client(url, verbose=False)
    widgets = {"Column 1": "base", "Column 2": "pirate", "Max new tokens": 12}
    first = compare(client, "capital of France", **widgets, **{"Web search": True})[-1]
    final = compare(client, FOLLOW_UP, **widgets)[-1]  # no search: only turn 1's sources can answer it
    sent = augment_question("capital of France", search.search("capital of France"), today())
    expected = [{"role": "user", "content": sent}, {"role": "assistant", "content": text_of(first[CHAT_1][-1])},
                {"role": "user", "content": FOLLOW_UP}]
    answer = real_engine.generate("base", expected, params=SamplingParams(max_new_tokens=12)).text
    assert text_of(final[CHAT_1][-1]) == answer
    for chat in (final[CHAT_1], final[CHAT_2]):
        assert [text_of(m) for m in chat if m["role"] == "user"] == ["capital of France", FOLLOW_UP]
    status = client.predict(api_name="/compare_vote_tie")
    assert "Vote saved" in status
    vote = ctx.votes.all()[-1]
    words = [m["content"] for m in vote.conversation_a if m["role"] == "user"]
    assert words == ["capital of France", FOLLOW_UP]
    assert all(set(m) == {"role", "content"} for m in vote.conversation_a + vote.conversation_b)


def test_an_arena_vote_after_a_searched_turn_keeps_the_users_words(launch_app, real_engine):
    paris = SearchResult("Paris", "https://example.org/paris", "The capital of France.")
    search = WebSearch(StaticProvider({"capital of france": [paris]}))
    ctx, url = launch_app(real_engine, search=search)
    client = Client(url, verbose=False)
    args = call_args(client, "/arena_send", Message="capital of France", **{"Web search": True, "Max new tokens": 8})
    final = client.submit(*args, api_name="/arena_send").result(timeout=120)
    assert [text_of(m) for m in final[1] if m["role"] == "user"] == ["capital of France"]
    client.predict(api_name="/arena_vote_tie")
    vote = ctx.votes.all()[-1]
    assert vote.conversation_a[0] == vote.conversation_b[0] == {"role": "user", "content": "capital of France"}


def test_too_long_message_is_refused_in_one_line(real_app):
    _, client = real_app
    with pytest.raises(Exception) as error:
        compare(client, "x" * 5000)
    assert "the limit is 4000" in str(error.value)


def test_leaderboard_and_exports_from_known_votes(launch_app, tmp_path, tiny_model_path):
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=tmp_path))
    store = VoteStore(tmp_path / "votes.sqlite")
    chat = lambda answer: [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": answer}]  # noqa: E731
    for winner in ["a"] * 6 + ["b"] * 2 + ["tie"] * 2:
        store.add(Vote("tuned", "base", winner, chat("tuned answer"), chat("base answer"), mode="arena"))
    _, url = launch_app(engine)
    client = Client(url, verbose=False)
    summary, table, _, _ = client.predict(api_name="/leaderboard")
    assert summary.startswith("10 votes (10 blind arena")
    rows = {row[1]: dict(zip(table["headers"], row)) for row in table["data"]}
    assert rows["tuned"]["battles"] == "10" and rows["tuned"]["wins"] == "6" and rows["tuned"]["ties"] == "2"
    assert rows["tuned"]["win rate"] == "70%"
    assert int(rows["tuned"]["score"]) > int(rows["base"]["score"])
    low, high = (int(x) for x in rows["tuned"]["95% interval"].split(" – "))
    assert low <= int(rows["tuned"]["score"]) <= high
    path = client.predict(api_name="/export_pairs")
    pairs = read_preference_pairs(path)
    assert len(pairs) == 8 and sum(p.chosen == "tuned answer" for p in pairs) == 6
    records = [json.loads(line) for line in open(path)]
    assert set(records[0]) >= {"prompt", "chosen", "rejected"}
    sharegpt = json.load(open(client.predict(api_name="/export_sharegpt")))
    assert sharegpt[0]["conversations"][0] == {"from": "human", "value": "Q?"}


def test_public_mode_refuses_uploads_and_deletes(launch_app, tmp_path, tiny_model_path, tiny_adapters):
    import shutil

    shutil.copytree(tiny_adapters / "a1", tmp_path / "adapters" / "keep")
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=tmp_path))
    _, url = launch_app(engine, public=True)
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match="deleting adapters is turned off on this public server"):
        client.predict("keep", True, api_name="/models_delete")
    assert (tmp_path / "adapters" / "keep").is_dir()


def test_login_required_with_auth(launch_app, tmp_path, tiny_model_path):
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=tmp_path))
    _, url = launch_app(engine, auth=("ada", "lovelace"))
    with pytest.raises(Exception):
        Client(url, verbose=False).predict(api_name="/leaderboard")
    assert Client(url, auth=("ada", "lovelace"), verbose=False).predict(api_name="/leaderboard")[0].startswith("No votes")

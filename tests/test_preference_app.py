"""The Leaderboard's "Train on these votes" through the app's HTTP API: the refusals a caller can see.

The whole loop (votes in the Arena, the job, the new adapter against its parent) runs in the browser test.
"""
from __future__ import annotations

import pytest
from gradio_client import Client

from arena.votes import Vote, VoteStore
from models import Engine, EngineConfig


def chat(answer: str) -> list[dict]:
    return [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": answer}]


@pytest.fixture
def voted(tmp_path, tiny_model_path, tiny_adapters):
    """An engine with adapter a1 and a vote store: one decisive vote, a tie, a "both bad" and identical answers."""
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=tmp_path, adapter_dirs=[tiny_adapters]))
    store = VoteStore(tmp_path / "votes.sqlite")
    for winner, a, b in [("a", "a1 answer", "base answer"), ("tie", "x", "y"), ("both_bad", "x", "y"), ("a", "s", "s")]:
        store.add(Vote("a1", "base", winner, chat(a), chat(b), mode="arena"))
    return engine


def test_train_on_votes_is_refused_on_a_public_server(launch_app, voted):
    ctx, url = launch_app(voted, public=True)
    with pytest.raises(Exception, match="training is turned off on this public server"):
        Client(url, verbose=False).predict("any", "a1", "a1-dpo", api_name="/train_on_votes")
    assert not (voted.config.data_dir / "datasets").exists() and ctx.jobs is None


def test_train_on_votes_counts_what_it_leaves_out(launch_app, voted):
    ctx, url = launch_app(voted)
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match=r'1 pairs \(left out: 1 ties, 1 "both bad", 1 identical answers\): at least '
                                        r"2 pairs are needed"):
        client.predict("any", "a1", "a1-dpo", api_name="/train_on_votes")
    with pytest.raises(Exception, match=r"0 pairs \(left out: .*1 won by another variant\)"):
        client.predict("base", "a1", "a1-dpo", api_name="/train_on_votes")
    with pytest.raises(Exception, match="name"):
        client.predict("any", "a1", "../escape", api_name="/train_on_votes")
    assert ctx.jobs.store.list() == []

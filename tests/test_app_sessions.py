"""Per-session rules on the running app: Stop ends every request of a session, one vote per battle or
turn (tracked by the server, so replaying a request does not help), public caps, login back-off."""
from __future__ import annotations

import shutil

import httpx
import pytest
from gradio_client import Client

from models import Engine, EngineConfig
from tests.app_client import call_args, error_of, page_config, queue_call
from tests.helpers import wait_for


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_model_path, tiny_adapters):
    data = tmp_path_factory.mktemp("sessions_data")
    shutil.copytree(tiny_adapters / "a1", data / "adapters" / "a1")
    return Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=data))


@pytest.fixture(scope="module")
def app(launch_app, engine):
    ctx, url = launch_app(engine)
    return ctx, url


def compare_args(client, message: str, tokens: int, **widgets) -> list:
    return call_args(client, "/compare_send", Message=message, **{"Max new tokens": tokens, **widgets})


def error_text(call) -> str:
    with pytest.raises(Exception) as caught:
        call()
    return str(caught.value)


def test_stop_ends_every_request_of_the_session_not_only_the_newest(app):
    ctx, url = app
    client = Client(url, verbose=False)
    first = client.submit(*compare_args(client, "Count to a thousand.", 1500), api_name="/compare_send")
    wait_for(lambda: len(first.outputs()) > 1, timeout=60, what="the first answer to stream")
    second = client.submit(*compare_args(client, "Name every colour.", 1500), api_name="/compare_send")
    wait_for(lambda: ctx.requests.count(client.session_hash) == 2, timeout=30, what="both requests to run")
    client.predict(api_name="/compare_stop")
    for job in (first, second):
        job.result(timeout=120)
    # The older request (the one generating) was stopped too, not left to run to its 1,500 tokens. Its
    # streamed chunks say so; which chunk gradio_client keeps as the result of two concurrent jobs varies.
    shown = str(first.outputs())
    assert "stopped" in shown and "hit max tokens" not in shown
    assert ctx.requests.count(client.session_hash) == 0


def test_one_vote_per_compare_turn_and_replaying_it_does_not_help(app):
    ctx, url = app
    client = Client(url, verbose=False)
    client.submit(*compare_args(client, "Name a fruit.", 4, **{"Column 2": "a1"}), api_name="/compare_send").result(120)
    before = ctx.votes.count()
    assert "Vote saved" in client.predict(api_name="/compare_vote_tie")
    assert "already voted" in error_text(lambda: client.predict(api_name="/compare_vote_best_1"))
    # The same request again, raw, in the same session (its state unchanged on the server).
    config = page_config(url)
    tie = next(d for d in config["dependencies"] if d["api_name"] == "compare_vote_tie")
    replay = queue_call(url, tie["id"], [None] * len(tie["inputs"]), client.session_hash)
    assert "already voted" in error_of(replay)
    assert ctx.votes.count() == before + 1
    # A new answered turn is a new ballot.
    client.submit(*compare_args(client, "Name a tree.", 4, **{"Column 2": "a1"}), api_name="/compare_send").result(120)
    assert "Vote saved" in client.predict(api_name="/compare_vote_best_2")
    vote = ctx.votes.all()[-1]
    assert (vote.variant_a, vote.variant_b, vote.winner, vote.mode) == ("base", "a1", "b", "compare")


def test_one_vote_per_blind_battle(app):
    ctx, url = app
    client = Client(url, verbose=False)
    client.predict(api_name="/arena_new_battle")
    client.submit(*call_args(client, "/arena_send", Message="Hi", **{"Max new tokens": 4}),
                  api_name="/arena_send").result(timeout=120)
    before = ctx.votes.count()
    reveal = client.predict(api_name="/arena_vote_a")[0]
    assert "Model A was" in reveal
    assert "already voted" in error_text(lambda: client.predict(api_name="/arena_vote_b"))
    assert "press New battle" in error_text(lambda: client.submit(
        *call_args(client, "/arena_send", Message="More?", **{"Max new tokens": 4}), api_name="/arena_send").result(60))
    assert ctx.votes.count() == before + 1


def test_votes_are_rate_limited_per_session(launch_app, engine):
    ctx, url = launch_app(engine, votes_per_minute=2)
    client = Client(url, verbose=False)
    for n in range(3):
        client.submit(*compare_args(client, f"Say {n}.", 2), api_name="/compare_send").result(timeout=120)
        if n < 2:
            assert "Vote saved" in client.predict(api_name="/compare_vote_tie")
    assert "at most 2 votes a minute" in error_text(lambda: client.predict(api_name="/compare_vote_tie"))


def test_public_mode_caps_tokens_columns_and_running_requests(launch_app, engine):
    ctx, url = launch_app(engine, public=True, public_max_new_tokens=64, public_max_columns=2, public_max_requests=1)
    client = Client(url, verbose=False)
    for widgets in ({"Max new tokens": 500}, {"Columns": 3}):
        refusal = error_text(lambda: client.submit(*compare_args(client, "Hi", 8, **widgets),
                                                   api_name="/compare_send").result(60))
        assert "\n" not in refusal and ("64" in refusal or "[2]" in refusal)
    first = client.submit(*compare_args(client, "Count to a thousand.", 64), api_name="/compare_send")
    wait_for(lambda: ctx.requests.count(client.session_hash) == 1, timeout=60, what="the first request to run")
    assert "already has 1 requests running" in error_text(
        lambda: client.submit(*compare_args(client, "Hi", 8), api_name="/compare_send").result(60))
    client.predict(api_name="/compare_stop")
    first.result(timeout=60)


def test_wrong_logins_lock_the_client_out_for_a_while(launch_app, engine):
    _, url = launch_app(engine, auth=("ada", "lovelace"), login_free_failures=5, login_lockout_s=60)
    login = url.rstrip("/") + "/login"
    with httpx.Client() as attacker:
        for n in range(100):
            assert attacker.post(login, data={"username": "ada", "password": f"guess{n}"}).status_code == 400
        assert attacker.post(login, data={"username": "ada", "password": "lovelace"}).status_code == 400
    # Another address (the same machine, 127.0.0.2) still gets in: the lockout is per client.
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as user:
        assert user.post(login, data={"username": "ada", "password": "lovelace"}).status_code == 200

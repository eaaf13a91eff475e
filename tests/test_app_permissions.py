"""The permission layer, tried the way an attacker would: every registered function of a public server
called by its fn_index through Gradio's queue (private ones too), on the real app and engine."""
from __future__ import annotations

import re
import shutil
import uuid

import pytest
from gradio_client import Client

from models import Engine, EngineConfig
from tests.app_client import default_inputs, error_of, page_config, queue_call

SECRET = "my locker code is XYZZY-4242"
REFUSED = "is turned off on this public server"
# What a visitor of a public server may call: its own session, what the page shows everyone, its vote.
VISITOR_FUNCTIONS = {
    "load_example",  # gr.Examples: copies an example into the caller's message box
    "compare_send", "_send", "compare_regenerate", "compare_stop", "compare_clear", "forget", "_show_columns",
    "_refresh_variants", "compare_vote_best", "compare_vote_tie", "compare_vote_all_bad",
    "arena_send", "arena_stop", "arena_vote_a", "arena_vote_b", "arena_vote_tie", "arena_vote_both_bad",
    "arena_new_battle", "_matchup_choices",  # which adapter was trained on top of which: names every visitor sees
    "compare_rate", "arena_rate_a", "arena_rate_b",  # 1-5 ratings, through the vote rule
    "_refresh", "leaderboard",  # the leaderboard's scores: counts and ratings, no conversation
    "_adapter_choices",  # the adapter names of the train-on-votes form
    "apply_preset", "_start_from_choices", "_on_select",  # a form preset; adapter names and the table
    "close_session",
}
# Typed the way an attacker would: a real adapter to unload, a server file to read.
ATTACK = {"Message": "Hello", "Max new tokens": 16, "Adapter": "a1", "Dataset": "/etc/passwd",
          "Variants (in order)": ["base"], "Yes, move this adapter to the trash folder": True}


@pytest.fixture(scope="module")
def public_app(launch_app, tmp_path_factory, tiny_model_path, tiny_adapters):
    data = tmp_path_factory.mktemp("public_data")
    for name in ("a1", "a2"):
        shutil.copytree(tiny_adapters / name, data / "adapters" / name)
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=data))
    ctx, url = launch_app(engine, public=True)
    return ctx, url


def files_under(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "sqlite" not in p.name}


def test_every_function_of_a_public_server_is_refused_or_stays_in_the_callers_session(public_app):
    ctx, url = public_app
    # Another visitor's conversation and vote: nothing below may read them back.
    other = Client(url, verbose=False)
    other.submit(*default_inputs_for(other, SECRET), api_name="/compare_send").result(timeout=120)
    other.predict(api_name="/compare_vote_tie")
    data_dir = ctx.engine.config.data_dir
    adapters_before = {a.name: a.status for a in ctx.engine.adapters()}
    files_before, votes_before = files_under(data_dir), ctx.votes.count()

    config = page_config(url)
    session = uuid.uuid4().hex
    ran, refused, leaked = [], [], []
    for dependency in config["dependencies"]:
        if not dependency.get("backend_fn"):
            continue
        name = re.sub(r"_\d+$", "", dependency["api_name"])
        result = queue_call(url, dependency["id"], default_inputs(config, dependency, **ATTACK), session)
        error = error_of(result)
        if error is not None and REFUSED in error:
            refused.append(name)
        else:
            ran.append(name)
        if SECRET.split()[-1] in str(result):
            leaked.append(name)
    assert set(ran) <= VISITOR_FUNCTIONS, f"ran on a public server: {sorted(set(ran) - VISITOR_FUNCTIONS)}"
    assert not set(refused) & VISITOR_FUNCTIONS, f"refused a visitor: {sorted(set(refused) & VISITOR_FUNCTIONS)}"
    assert {"models_unload", "models_rescan", "eval_run", "generate_data", "export_pairs", "train_check",
            "_watch", "train_on_votes"} <= set(refused)
    assert not leaked, f"another session's conversation came back from {leaked}"
    assert {a.name: a.status for a in ctx.engine.adapters()} == adapters_before
    assert files_under(data_dir) == files_before
    # The caller's own votes only, at most one per ballot (its Compare turn, its Arena battle).
    new_votes = ctx.votes.all()[votes_before:]
    assert all(v.session_id == session for v in new_votes)
    assert sum(v.mode == "arena" for v in new_votes) <= 1 and sum(v.mode == "compare" for v in new_votes) <= 1


def default_inputs_for(client: Client, message: str) -> list:
    from tests.app_client import call_args

    return call_args(client, "/compare_send", Message=message, **{"Max new tokens": 4})


def test_an_undeclared_handler_stops_the_app_from_starting(tiny_engine):
    import gradio as gr

    from app.access import Access, guard_handlers

    with gr.Blocks() as demo:
        button = gr.Button()
        button.click(lambda: None, None, None)
    with pytest.raises(RuntimeError, match="declares no access need"):
        guard_handlers(demo, Access(public=False))

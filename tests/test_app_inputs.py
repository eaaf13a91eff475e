"""What a visitor types into the running app: paths (only inside the folders the app owns), judge and
teacher names (never a URL of theirs), variant names (any adapter loaded now, not only at start)."""
from __future__ import annotations

import json
import shutil

import pytest
from gradio_client import Client, handle_file

from evaluation.endpoints import parse_judge_endpoints
from models import Engine, EngineConfig
from tests.app_client import call_args, page_config
from tests.helpers import wait_for

OUTSIDE_ROW = "SECRET-ROW-77"
REFUSAL = "pick one of the listed files or upload one; other paths are not read"


@pytest.fixture(scope="module")
def operator_app(launch_app, tmp_path_factory, tiny_model_path, tiny_adapters):
    """A private (not public) app: every handler runs, so only the input rules stand in the way."""
    data = tmp_path_factory.mktemp("inputs_data")
    shutil.copytree(tiny_adapters / "a1", data / "adapters" / "a1")
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=data))
    ctx, url = launch_app(engine)
    return ctx, Client(url, verbose=False)


def error_text(call) -> str:
    with pytest.raises(Exception) as caught:
        call()
    return str(caught.value)


def test_typed_paths_outside_the_apps_folders_get_one_line_that_says_nothing(operator_app, tmp_path):
    ctx, client = operator_app
    outside = tmp_path / "outside" / "secret.json"  # a valid dataset, just not the app's
    outside.parent.mkdir()
    outside.write_text(json.dumps([{"instruction": OUTSIDE_ROW, "output": "yes"}] * 3), encoding="utf-8")
    datasets = ctx.engine.config.data_dir / "datasets"
    datasets.mkdir(exist_ok=True)
    (datasets / "link.json").symlink_to(outside)  # a symlink inside that points out
    typed = ["/etc/passwd", "/etc/no-such-file.json", str(outside), "../../../../../../../../etc/passwd",
             str(datasets / ".." / ".." / ".." / outside.relative_to("/")), str(datasets / "link.json"), "link.json"]
    messages = set()
    for path in typed:
        check_args, run_args = call_args(client, "/train_check", Dataset=path), call_args(client, "/eval_run", Suite=path)
        message = error_text(lambda: client.predict(*check_args, api_name="/train_check"))
        assert OUTSIDE_ROW not in message and "root:" not in message
        messages.add(message.splitlines()[-1])
        suite = error_text(lambda: client.predict(*run_args, api_name="/eval_run"))
        messages.add(suite.splitlines()[-1].replace("suite:", "dataset:"))
    assert len(messages) == 1 and REFUSAL in messages.pop()  # the same line whether the file exists or not


def test_a_dataset_inside_the_apps_folders_is_checked(operator_app):
    ctx, client = operator_app
    datasets = ctx.engine.config.data_dir / "datasets"
    datasets.mkdir(exist_ok=True)
    (datasets / "mine.json").write_text(json.dumps([{"instruction": "Say hi.", "output": "Hi!"}] * 6), encoding="utf-8")
    report, _ = client.predict(*call_args(client, "/train_check", Dataset="mine.json"), api_name="/train_check")
    assert "**mine.json**" in report and "6 of 6 rows kept" in report


def test_a_judge_or_teacher_url_typed_into_the_app_receives_nothing(operator_app, chat_server, monkeypatch, tmp_path):
    ctx, client = operator_app
    monkeypatch.setenv("OPENAI_API_KEY", "sk-server-secret")
    server = chat_server(lambda body: "Fine. [RESULT] 5")
    suite = ctx.engine.config.data_dir / "uploads" / "judged.jsonl"
    suite.parent.mkdir(exist_ok=True)
    suite.write_text(json.dumps({"id": "j1", "category": "c", "prompt": "Say hi.",
                                 "check": {"type": "judge", "rubric": "Is it helpful?"}}) + "\n", encoding="utf-8")
    texts = tmp_path / "texts.txt"
    texts.write_text("The sky is blue.\n", encoding="utf-8")
    url = f"{server.url}?model=m"
    run_args = call_args(client, "/eval_run", Suite=str(suite), **{
        "Judge (a variant, or an endpoint configured on the server)": url, "Max new tokens": 16})
    run_error = error_text(lambda: client.predict(*run_args, api_name="/eval_run"))
    teach_error = error_text(lambda: client.predict(handle_file(str(texts)), "text", "qa_pairs", url, "out.json",
                                                    api_name="/generate_data"))
    for task in list(ctx.evals.tasks.values()):  # had a run started anyway, let it reach its judge
        wait_for(lambda: task.status != "running", timeout=120, what=f"{task.id} to end")
    assert server.requests == []
    assert "neither a loaded variant nor an endpoint configured on this server" in run_error
    assert "neither a loaded variant nor an endpoint configured on this server" in teach_error


def test_a_configured_endpoint_is_offered_by_name_and_gets_only_its_own_key(launch_app, chat_server, monkeypatch,
                                                                           tmp_path, tiny_engine):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-server-secret")
    monkeypatch.setenv("ARENA_TEST_TEACHER_KEY", "sk-teacher-only")
    server = chat_server(lambda body: '{"question": "What colour is the sky?", "answer": "Blue."}')
    endpoints = parse_judge_endpoints([f"teacher={server.url}?model=qwen&key_env=ARENA_TEST_TEACHER_KEY"])
    ctx, url = launch_app(tiny_engine, judge_endpoints=endpoints)
    judge_box = next(c for c in page_config(url)["components"]
                     if c.get("props", {}).get("label", "").startswith("Judge ("))
    assert [choice[1] for choice in judge_box["props"]["choices"]] == ["none", *tiny_engine.variants(), "teacher"]
    texts = tmp_path / "texts.txt"
    texts.write_text("The sky is blue.\n", encoding="utf-8")
    client = Client(url, verbose=False)
    status, _ = client.predict(handle_file(str(texts)), "text", "qa_pairs", "teacher", "sky.json",
                               api_name="/generate_data")
    assert "sky.json" in status
    run = ctx.evals.latest()  # the generation runs in the background, listed with the evaluations
    wait_for(lambda: run.status != "running", timeout=60, what="the generation to end")
    assert run.status == "done", run.error
    assert [r["headers"]["Authorization"] for r in server.requests] == ["Bearer sk-teacher-only"]
    assert server.requests[0]["body"]["model"] == "qwen"


def test_an_adapter_installed_after_start_can_be_picked_through_the_api(operator_app, tiny_adapters):
    ctx, client = operator_app
    shutil.copytree(tiny_adapters / "a2", ctx.engine.config.paths.adapter("late"))
    ctx.engine.rescan()
    args = call_args(client, "/compare_send", Message="Hi", **{"Column 1": "base", "Column 2": "late",
                                                                "Max new tokens": 4})
    final = client.submit(*args, api_name="/compare_send").result(timeout=120)
    assert final[4][-1]["content"]  # column 2 answered, as 'late'
    unknown = call_args(client, "/compare_send", Message="Hi", **{"Column 2": "nope", "Max new tokens": 4})
    assert "unknown variant 'nope'" in error_text(lambda: client.submit(*unknown, api_name="/compare_send").result(60))

"""The /v1 API driven by the official `openai` client over loopback: the real app, engine and HTTP server."""
from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from dataclasses import fields
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from gradio_client import Client

from models import ChatRequest, Engine, EngineConfig, SamplingParams
from models.prompts import build_prompt_ids
from tests.app_client import call_args
from tests.helpers import wait_for

HELLO = [{"role": "user", "content": "Say hello."}]
GREEDY = dict(temperature=0, max_tokens=12)


def raw_request(url: str, path: str, body: dict) -> socket.socket:
    """A request sent over a plain socket, so the test can hang up before any answer comes."""
    address = urlsplit(url)
    data = json.dumps(body).encode()
    sock = socket.create_connection((address.hostname, address.port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def api_client(url: str, key: str = "unused", **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=url.rstrip("/") + "/v1", api_key=key, max_retries=0, **kwargs)


@pytest.fixture(scope="module")
def tiny_api(launch_app, tiny_engine):
    ctx, url = launch_app(tiny_engine)
    return ctx, url, api_client(url)


def test_models_list_the_base_and_each_loaded_adapter_with_its_parent(tiny_api, tiny_engine):
    _, _, client = tiny_api
    models = {m.id: m for m in client.models.list().data}
    base = tiny_engine.info()["name"]
    loaded = [a.name for a in tiny_engine.adapters() if a.status == "loaded"]
    assert set(models) == {base, *loaded} and {"a1", "a2"} <= set(loaded)
    assert models[base].parent is None
    assert all(models[name].parent == base and models[name].root.endswith(name) for name in loaded)
    assert client.models.retrieve("a1").id == "a1"


def test_a_greedy_chat_completion_is_the_engines_answer(tiny_api, tiny_engine):
    _, _, client = tiny_api
    for model, variant in [("base", "base"), (tiny_engine.info()["name"], "base"), ("a1", "a1")]:
        reply = client.chat.completions.create(model=model, messages=HELLO, **GREEDY)
        expected = tiny_engine.generate(variant, HELLO, params=SamplingParams(max_new_tokens=12))
        assert reply.choices[0].message.content == expected.text
        assert reply.choices[0].finish_reason == ("length" if expected.stats.finish_reason == "length" else "stop")
        assert reply.usage.prompt_tokens == expected.stats.prompt_tokens
        assert reply.usage.completion_tokens == expected.stats.new_tokens
    two = client.chat.completions.create(model="a1", messages=HELLO, n=2, **GREEDY)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].message.content == two.choices[1].message.content


def test_streaming_sends_pieces_then_usage_then_done(tiny_api, tiny_engine):
    _, url, client = tiny_api
    chunks = list(client.chat.completions.create(model="a2", messages=HELLO, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == tiny_engine.generate("a2", HELLO, params=SamplingParams(max_new_tokens=12)).text
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    raw = httpx.post(url + "v1/chat/completions", json={"model": "base", "messages": HELLO, "stream": True, **GREEDY})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_two_adapters_in_two_concurrent_streams_each_get_their_own_answer(tiny_api, tiny_engine):
    _, _, client = tiny_api
    texts = {}

    def ask(model):
        stream = client.chat.completions.create(model=model, messages=HELLO, stream=True, **GREEDY)
        texts[model] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=ask, args=(m,)) for m in ("a1", "a2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for model in ("a1", "a2"):
        assert texts[model] == tiny_engine.generate(model, HELLO, params=SamplingParams(max_new_tokens=12)).text
    assert texts["a1"] != texts["a2"]


def test_a_chat_from_the_page_and_one_from_the_api_both_stream(tiny_api):
    _, url, client = tiny_api
    page = Client(url, verbose=False)
    args = call_args(page, "/compare_send", Message="Say hello.", **{"Column 1": "base", "Column 2": "a1",
                                                                        "Max new tokens": 12})
    job = page.submit(*args, api_name="/compare_send")
    stream = client.chat.completions.create(model="a2", messages=HELLO, stream=True, **GREEDY)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    job.result(timeout=120)
    assert len(pieces) > 1 and len(job.outputs()) > 2


def test_echo_logprobs_score_like_the_engine(tiny_api, tiny_engine):
    _, _, client = tiny_api
    tokenizer = tiny_engine.tokenizer
    question = [{"role": "user", "content": "Is the sky blue?"}]
    context = build_prompt_ids(tokenizer, question)
    for variant in ("base", "a1"):
        for choice in ("Yes, it is.", "No"):
            ids = tokenizer(choice, add_special_tokens=False)["input_ids"]
            reply = client.completions.create(model=variant, prompt=context + ids, echo=True, logprobs=0, max_tokens=0)
            logprobs = reply.choices[0].logprobs
            assert logprobs.token_logprobs[0] is None and len(logprobs.tokens) == len(context) + len(ids)
            expected = tiny_engine.loglikelihood(variant, question, [choice])[0].logprob
            assert sum(logprobs.token_logprobs[-len(ids):]) == pytest.approx(expected, abs=1e-4)


def test_text_completions_generate_from_a_raw_prompt(tiny_api, tiny_engine):
    _, _, client = tiny_api
    ids = tiny_engine.tokenizer("Once upon a time")["input_ids"]
    reply = client.completions.create(model="a1", prompt="Once upon a time", temperature=0, max_tokens=6)
    events = tiny_engine.stream([ChatRequest("a1", None, params=SamplingParams(max_new_tokens=6), prompt_ids=ids)])
    assert reply.choices[0].text == Engine.answers(events, 1)[0].text
    streamed = client.completions.create(model="a1", prompt="Once upon a time", temperature=0, max_tokens=6,
                                         stream=True, echo=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == "Once upon a time" + reply.choices[0].text
    scored = client.completions.create(model="a1", prompt=ids, temperature=0, max_tokens=6, logprobs=2)
    logprobs = scored.choices[0].logprobs
    assert scored.choices[0].text == reply.choices[0].text and "".join(logprobs.tokens) == reply.choices[0].text
    assert len(logprobs.token_logprobs) == 6 and all(lp <= 0 for lp in logprobs.token_logprobs)
    base = client.completions.create(model="base", prompt=ids, temperature=0, max_tokens=6, logprobs=2).choices[0]
    assert all(len(top) == 2 and max(top.values()) >= lp  # the base's alternatives, the likeliest first
               for top, lp in zip(base.logprobs.top_logprobs, base.logprobs.token_logprobs))


@pytest.mark.parametrize("fields, param, words", [
    ({"temperature": 7}, "temperature", "from 0 to 2"),
    ({"n": 0}, "n", "from 1 to 8"),
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages", "messages[0].role"),
    ({"frequency_penalty": 0.5}, "frequency_penalty", "not supported"),
    ({"logprobs": True}, "logprobs", "not supported"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "not supported"),
    ({"mirostat": 2}, "mirostat", "unsupported field 'mirostat'"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed with stream"),
])
def test_bad_fields_are_refused_by_name(tiny_api, fields, param, words):
    _, url, _ = tiny_api
    reply = httpx.post(url + "v1/chat/completions", json={"model": "base", "messages": HELLO, **fields})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == param and words in error["message"] and error["type"] == "invalid_request_error"


def test_an_unknown_model_is_a_404_listing_what_exists(tiny_api, tiny_engine):
    _, _, client = tiny_api
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="gpt-9", messages=HELLO)
    message = error.value.body["message"]
    assert "'gpt-9'" in message and "a1" in message and tiny_engine.info()["name"] in message
    assert error.value.body["code"] == "model_not_found"


def test_an_over_long_conversation_is_a_400_with_both_numbers(tiny_api, tiny_engine):
    _, _, client = tiny_api
    long = [{"role": "user", "content": "word " * 9000}]
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="base", messages=long)
    tokens = len(build_prompt_ids(tiny_engine.tokenizer, long))
    assert tokens > tiny_engine.context_limit and error.value.body["code"] == "context_length_exceeded"
    assert f"{tokens} tokens" in error.value.body["message"] and str(tiny_engine.context_limit) in error.value.body["message"]


def test_the_key_is_required_on_every_route_and_public_servers_refuse_adapter_changes(launch_app, tiny_engine):
    _, url = launch_app(tiny_engine, api_key="s3cret", public=True)
    for method, path in [("GET", "v1/models"), ("POST", "v1/chat/completions"), ("GET", "v1/nothing-here")]:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            reply = httpx.request(method, url + path, headers=headers, json={"model": "base", "messages": HELLO})
            assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        api_client(url, "wrong").models.list()
    client = api_client(url, "s3cret")
    assert client.chat.completions.create(model="a1", messages=HELLO, **GREEDY).choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError, match="turned off on this public server"):
        client.post("/load_lora_adapter", body={"lora_name": "a3", "lora_path": "/tmp/a3"}, cast_to=dict)
    for too_much, words in [({"max_tokens": 513}, "max_tokens must be a whole number from 1 to 512"),
                            ({"n": 4}, "n must be a whole number from 1 to 3")]:  # the page's public caps
        with pytest.raises(openai.BadRequestError, match=words):
            client.chat.completions.create(model="a1", messages=HELLO, **too_much)


def test_adapters_loaded_and_unloaded_through_the_api_come_and_go_in_the_list(launch_app, tmp_path, tiny_model_path,
                                                                               tiny_adapters):
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=tmp_path))
    _, url = launch_app(engine)
    client = api_client(url)
    names = lambda: {m.id for m in client.models.list().data}  # noqa: E731
    assert "fresh" not in names()
    target = shutil.copytree(tiny_adapters / "a1", tmp_path / "adapters" / "fresh")
    with pytest.raises(openai.BadRequestError, match="not inside this server's adapter folders"):
        client.post("/load_lora_adapter", body={"lora_name": "a1", "lora_path": str(tiny_adapters / "a1")},
                    cast_to=dict)
    client.post("/load_lora_adapter", body={"lora_name": "fresh", "lora_path": str(target)}, cast_to=dict)
    assert "fresh" in names()
    assert client.chat.completions.create(model="fresh", messages=HELLO, **GREEDY).choices[0].message.content
    client.post("/unload_lora_adapter", body={"lora_name": "fresh"}, cast_to=dict)
    assert "fresh" not in names()
    with pytest.raises(openai.NotFoundError, match="is available"):
        client.chat.completions.create(model="fresh", messages=HELLO)


def test_a_busy_server_answers_429_at_once(launch_app, tiny_engine):
    _, url = launch_app(tiny_engine, api_max_pending=1)
    client = api_client(url)
    first = client.chat.completions.create(model="base", messages=HELLO, stream=True, temperature=0, max_tokens=4000)
    next(iter(first))  # the first request holds the only place
    with pytest.raises(openai.RateLimitError) as error:
        client.chat.completions.create(model="base", messages=HELLO, **GREEDY)
    assert "server busy" in error.value.body["message"] and error.value.response.headers["retry-after"] == "1"
    first.close()  # hanging up gives the place back

    def answered():
        try:
            return client.chat.completions.create(model="base", messages=HELLO, **GREEDY)
        except openai.RateLimitError:
            return None
    wait_for(answered, what="the place to be given back")


def one_row_engine(data_dir: Path, base: Path) -> Engine:
    """An engine that answers one request at a time, so a second one has to wait."""
    one_row = {"max_batch": 1} if "max_batch" in {f.name for f in fields(EngineConfig)} else {}  # the batched backend
    return Engine.load(EngineConfig(base=str(base), data_dir=data_dir, **one_row))


def test_a_request_that_cannot_get_the_model_in_time_is_a_503(launch_app, tmp_path, tiny_model_path):
    engine = one_row_engine(tmp_path, tiny_model_path)
    _, url = launch_app(engine, api_wait_s=0.5)
    client = api_client(url)
    running = client.chat.completions.create(model="base", messages=HELLO, stream=True, temperature=0,
                                             max_tokens=4000)
    next(iter(running))  # generating: the model has no room for another request
    with pytest.raises(openai.InternalServerError) as error:
        client.chat.completions.create(model="base", messages=HELLO, **GREEDY)
    running.close()
    assert error.value.status_code == 503 and "within 0.5 s" in error.value.body["message"]
    wait_for(lambda: engine.info()["waiting"] == 0, timeout=10, what="the request to leave the line")


def test_a_client_that_hangs_up_frees_its_place_at_once(launch_app, tmp_path, tiny_model_path):
    engine = one_row_engine(tmp_path, tiny_model_path)
    _, url = launch_app(engine)
    client = api_client(url)
    running = client.chat.completions.create(model="base", messages=HELLO, stream=True, temperature=0,
                                             max_tokens=8000)  # the whole context: a minute or more here
    chunks = iter(running)
    next(chunks), next(chunks)
    waiting = raw_request(url, "/v1/chat/completions", {"model": "base", "messages": HELLO, "stream": True})
    wait_for(lambda: engine.info()["waiting"] == 1, what="the second request to wait in line")
    waiting.close()  # hang up while waiting: out of the line at once
    wait_for(lambda: engine.info()["waiting"] == 0, timeout=10, what="the line to empty")
    running.close()  # hang up mid-answer: the generation stops, the next request need not wait for it
    started = time.monotonic()
    quick = api_client(url, timeout=60).chat.completions.create(model="base", messages=HELLO, **GREEDY)
    assert quick.choices[0].message.content and time.monotonic() - started < 10


def test_no_ui_serves_only_the_api_and_warns_when_open_to_the_network(arena_process, tmp_path, tiny_model_path,
                                                                      tiny_adapters):
    shutil.copytree(tiny_adapters / "a2", tmp_path / "adapters" / "a2")
    server = arena_process("--no-ui", "--base", str(tiny_model_path), "--data-dir", str(tmp_path), host="0.0.0.0")
    assert "warning: the /v1 API on 0.0.0.0" in server.output() and "has no key" in server.output()
    assert {m.id for m in api_client(server.url + "/").models.list().data} == {tiny_model_path.name, "a2"}
    assert httpx.get(server.url + "/").status_code == 404  # no web page

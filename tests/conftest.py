"""Shared fixtures: the real default model (converted once), a tiny random Llama, and adapters made by PEFT."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from a model hub, here or in CI
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

from models import Engine, EngineConfig, ensure_default_model  # noqa: E402
from tests.chat_server import ChatServer  # noqa: E402
from tests.helpers import make_random_adapter, make_tiny_llama, train_tiny_adapter  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The embedded SmolLM2 as a safetensors folder, in the repo's data folder so it converts once."""
    return ensure_default_model(REPO / "arena_data" / "models")


@pytest.fixture(scope="session")
def tokenizer(default_model_path):
    """The default model's tokenizer and chat template, read only (a test that changes one loads its own)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_path)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, default_model_path) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", default_model_path)


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory, tiny_model_path) -> Path:
    """Three random LoRA adapters (a1, a2, a3) and one DoRA adapter for the tiny model."""
    root = tmp_path_factory.mktemp("tiny_adapters")
    for seed, name in enumerate(["a1", "a2", "a3"], 1):
        make_random_adapter(tiny_model_path, root / name, seed=seed)
    make_random_adapter(tiny_model_path, root / "dora1", seed=7, use_dora=True)
    return root


@pytest.fixture(scope="session")
def shared_engines() -> set[int]:
    """ids of the session's engines, which the per-module closer below leaves open."""
    return set()


@pytest.fixture(scope="module", autouse=True)
def engines_close_with_their_module(shared_engines):
    """Every engine a test module loads is closed when the module ends: an engine left open keeps its decode
    thread, weights and KV cache for the rest of the run (a full run once held 16 GB of them)."""
    loaded = []
    load = Engine.__dict__["load"].__func__

    def load_and_remember(cls, *args, **kwargs):
        engine = load(cls, *args, **kwargs)
        loaded.append(engine)
        return engine

    Engine.load = classmethod(load_and_remember)
    yield
    Engine.load = classmethod(load)
    for engine in loaded:
        if id(engine) not in shared_engines:
            engine.close()


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory, tiny_model_path, tiny_adapters, shared_engines) -> Engine:
    """The default (batched) backend in fp32, so answers and scores equal plain transformers'."""
    data = tmp_path_factory.mktemp("tiny_data")
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=data, adapter_dirs=[tiny_adapters],
                                      dtype="float32"))
    shared_engines.add(id(engine))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory, default_model_path) -> Path:
    """A real adapter on the default model, trained with PEFT directly (not our code) for a few steps."""
    root = tmp_path_factory.mktemp("real_adapters")
    return train_tiny_adapter(default_model_path, root / "pirate")


@pytest.fixture(scope="session")
def real_engine(tmp_path_factory, default_model_path, trained_adapter, shared_engines) -> Engine:
    """The default model on the default (batched) backend in fp32: greedy answers equal plain transformers'."""
    data = tmp_path_factory.mktemp("real_data")
    engine = Engine.load(EngineConfig(base=str(default_model_path), data_dir=data, dtype="float32",
                                      kv_budget_mb=512, adapter_dirs=[trained_adapter.parent]))
    shared_engines.add(id(engine))
    yield engine
    engine.close()


@pytest.fixture
def copy_adapter():
    def copy(source: Path, target: Path) -> Path:
        shutil.copytree(source, target)
        return target
    return copy


torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def launch_app():
    """Start the real app (real engine, real HTTP server); each closes when its module ends (an open one keeps
    its server, queue and job threads waking up: 28 of them once took a core from the rest of the run)."""
    from app.server import launch, make_context
    from app.options import AppSettings

    started = []

    def start(engine, search=None, **settings):
        ctx = make_context(engine, AppSettings(port=free_port(), **settings))
        if search is not None:
            ctx.search = search
        demo, url = launch(ctx, prevent_thread_lock=True, quiet=True)
        started.append((demo, ctx))
        return ctx, url

    yield start
    for demo, ctx in started:
        demo.close()
        if ctx.jobs is not None:
            ctx.jobs.stop()


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright, one per browser-test module (Playwright's sync API allows one
    running instance per thread, and it is closed before the next module's starts)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()



class ArenaProcess:
    """`python arena.py ARGS` as a separate process on a free port; its output goes to a log file."""

    def __init__(self, args: list[str], log: Path, host: str = "127.0.0.1"):
        import subprocess
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "arena.py", "--host", host, "--port", str(self.port), *args],
                                         cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True)

    def wait_ready(self, path: str = "/v1/models", headers: dict | None = None, timeout: float = 180) -> None:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"arena.py exited: {self.output()}"
            try:
                if httpx.get(self.url + path, headers=headers, timeout=2).status_code < 500:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise AssertionError(f"arena.py did not answer {path} within {timeout} s: {self.output()}")

    def output(self) -> str:
        return self.log.read_text()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except Exception:
            self.proc.kill()


@pytest.fixture(scope="module")
def arena_process(tmp_path_factory):
    """start(*args) -> a running `arena.py` process (e.g. `--no-ui`, the remote of remote-backend tests)."""
    started = []

    def start(*args, host: str = "127.0.0.1", headers: dict | None = None) -> ArenaProcess:
        process = ArenaProcess(list(args), tmp_path_factory.mktemp("arena_process") / "output.log", host)
        started.append(process)
        process.wait_ready(headers=headers)
        return process

    yield start
    for process in started:
        process.close()


@pytest.fixture
def chat_server():
    """start(respond, models=None, completions=None) -> a running OpenAI-compatible server (tests/chat_server.py);
    all closed after the test."""
    started = []

    def start(respond, **options) -> ChatServer:
        server = ChatServer(respond, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()

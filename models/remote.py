"""The remote backend: one or more OpenAI-compatible servers (vLLM, another LoRA Arena) instead of a local model.

`--backend-url` (repeatable) and `--backend-key` pick it. The variants are what the servers list
in `/v1/models` (vLLM's `parent` tells an adapter from the base); every server must serve the same
base, and each row goes to the least busy server that has its adapter. Prompts are built here with
the base's own tokenizer (only the tokenizer is loaded, no weights) and sent as token ids, so the
engine checks lengths and counts tokens exactly as it does locally; answers stream over SSE and
their statistics are measured here. Scoring uses `echo` + `logprobs` where the server has them,
and `NotSupported` says so where it does not.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

from kernel.errors import ArenaError, first_line

from .adapters import AdapterInfo
from .backend import BASE_ROW
from .base import DEFAULT_ALIASES, ensure_default_model, short_name
from .device_queue import Cancelled
from .remote_http import RemoteModel, RemoteServer
from .streaming import GenerationStats, StreamEvent

DEFAULT_CONTEXT = 2048  # when neither the server nor the tokenizer says


@dataclass
class RemoteBase:
    """What the engine knows of a base that runs elsewhere: its name, where, and its tokenizer."""

    name: str
    path: str  # the servers' URLs
    tokenizer: object
    root: str = ""
    model: object = None  # no weights here
    device: str = "remote"
    dtype: str = "remote"
    quantization: str | None = None
    parameters: int = 0
    saved_bytes: int = 0  # what quantisation saved here: nothing, no weights are here
    load_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def identities(self) -> set[str]:
        return {short_name(n) for n in (self.name, self.root) if n}


class RemoteBackend:
    name = "remote"

    def __init__(self, urls: list[str], key: str | None = None, tokenizer: str | None = None,
                 models_dir: Path | None = None, timeout_s: float = 600.0):
        if not urls:
            raise ArenaError("--backend-url needs at least one URL")
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True, name="remote-backend").start()
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0))
        self.servers = [RemoteServer(url, key, self.client) for url in urls]
        started = time.perf_counter()
        base = self.refresh()
        self.base = RemoteBase(base.id, ", ".join(s.url for s in self.servers),
                               load_tokenizer(tokenizer, base, models_dir), root=base.root)
        self.base.load_seconds = time.perf_counter() - started
        self._context = min((m.context for s in self.servers for m in s.models if not m.parent and m.context),
                            default=None)

    # ----- what the servers serve ------------------------------------------------------------------

    def refresh(self) -> RemoteModel:
        """List every server's models again; all must serve one base. Returns it."""
        bases = {}
        for server in self.servers:
            models = self.run(server.list_models())
            found = [m for m in models if not m.parent]
            if len(found) != 1:
                names = ", ".join(m.id for m in found) or "none"
                raise ArenaError(f"backend {server.url}: cannot tell its base model from its adapters "
                                 f"(models without a 'parent': {names}); serve one base per server")
            bases[server.url] = found[0]
        if len({short_name(b.id) for b in bases.values()}) > 1:
            served = "; ".join(f"{url} serves {b.id}" for url, b in bases.items())
            raise ArenaError(f"every --backend-url must serve the same base: {served}")
        return next(iter(bases.values()))

    def remote_adapters(self) -> list[AdapterInfo]:
        """Each adapter some server lists now, as loaded (it answers there)."""
        self.refresh()
        found: dict[str, AdapterInfo] = {}
        for server in self.servers:
            for model in server.models:
                if model.parent and model.id not in found:
                    info = AdapterInfo(model.id, Path(model.root), status="loaded", base_model=model.parent)
                    info.card = {"served_by": self.serving(model.id)}
                    found[model.id] = info
        return list(found.values())

    def serving(self, name: str) -> str:
        return "remote: " + ", ".join(s.url for s in self.servers if any(m.id == name for m in s.models))

    @property
    def context_limit(self) -> int:
        if self._context:
            return self._context
        limit = getattr(self.base.tokenizer, "model_max_length", 0) or 0
        return limit if 0 < limit < 1_000_000 else DEFAULT_CONTEXT

    @property
    def waiting(self) -> int:
        return 0  # the servers keep their own lines; this process cannot see them

    # ----- adapters ---------------------------------------------------------------------------------

    def attach(self, info: AdapterInfo, replace: bool = False) -> str:
        """Ask every server to load the adapter from its path (which must be visible to the server)."""
        reasons = []
        for server in self.servers:
            if not replace and any(m.id == info.name for m in server.models):
                continue  # it serves that name already (a shared adapter folder, or loaded at its start)
            if replace:
                self.run(server.unload_adapter(info.name))
            reason = self.run(server.load_adapter(info.name, str(info.path)))
            if reason:
                reasons.append(reason)
        self.refresh()
        return "; ".join(reasons) if len(reasons) == len(self.servers) else ""

    def detach(self, name: str) -> None:
        for server in self.servers:
            self.run(server.unload_adapter(name))
        self.refresh()

    # ----- generation --------------------------------------------------------------------------------

    def stream(self, rows: list, cancel: threading.Event | None = None) -> Iterator[StreamEvent]:
        """Every row as its own streamed request; closing the iterator (or cancel) hangs them all up."""
        events: queue.Queue = queue.Queue()
        future = asyncio.run_coroutine_threadsafe(self._rows(rows, events.put), self.loop)
        finished: set[int] = set()
        texts = {row.index: "" for row in rows}
        try:
            while True:
                # Checked before every event, not only when none is waiting: a fast server keeps the queue full.
                if cancel is not None and cancel.is_set():
                    future.cancel()
                    for row in rows:
                        if row.index not in finished:
                            yield StreamEvent(row.index, row.variant, "", texts[row.index], done=True,
                                              stats=GenerationStats(finish_reason="cancelled"))
                    return
                try:
                    event = events.get(timeout=0.05)
                except queue.Empty:
                    continue
                if event is None:
                    return
                if isinstance(event, BaseException):
                    raise event
                if event.done:
                    finished.add(event.index)
                texts[event.index] = event.text
                yield event
        finally:
            future.cancel()

    async def _rows(self, rows: list, emit) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for row in rows:
                    group.create_task(self._row(row, emit))
        except* ArenaError as errors:
            emit(errors.exceptions[0])
        except* (httpx.HTTPError, ValueError) as errors:
            emit(ArenaError(f"backend: {first_line(errors.exceptions[0])}"))
        finally:
            emit(None)

    async def _row(self, row, emit) -> None:
        server = self._least_busy(row.variant if row.adapter != BASE_ROW else None)
        model = self._model_on(server, row)
        server.busy += 1
        start = time.perf_counter()
        first = last = 0.0
        text, pieces, reason, tokens = "", 0, "stop", None
        try:
            async for piece in server.stream(model, row.prompt_ids, row.params):
                if piece.text:
                    last = time.perf_counter()
                    first = first or last
                    text += piece.text
                    pieces += 1
                    emit(StreamEvent(row.index, row.variant, piece.text, text))
                if piece.finish_reason:
                    reason, tokens = piece.finish_reason, piece.completion_tokens
        finally:
            server.busy -= 1
        new = tokens if tokens is not None else pieces
        stats = GenerationStats(
            prompt_tokens=len(row.prompt_ids), new_tokens=new, ttft_seconds=first - start if first else 0.0,
            total_seconds=time.perf_counter() - start, finish_reason="length" if reason == "length" else "stop",
            tokens_per_second=(new - 1) / (last - first) if new > 1 and last > first else 0.0)
        emit(StreamEvent(row.index, row.variant, "", text, done=True, stats=stats))

    def loglikelihood(self, rows: list, cancel: threading.Event | None = None) -> list[float]:
        """Sum of each continuation's token log-probabilities, from the server's echoed prompt scores."""
        async def one(row) -> float:
            server = self._least_busy(row.adapter if row.adapter != BASE_ROW else None)
            values = await server.token_logprobs(self._model_on(server, row), row.prompt_ids + row.continuation_ids)
            return float(sum(values[len(row.prompt_ids):]))

        async def every() -> list[float]:
            return list(await asyncio.gather(*(one(row) for row in rows)))
        return self.run(every(), cancel)

    def token_logprobs(self, row, top: int, cancel: threading.Event | None = None) -> list[tuple]:
        """Each continuation token after what precedes it, from the server's echo (no alternatives: servers
        differ in how they name theirs, and scoring needs only the values)."""
        server = self._least_busy(row.adapter if row.adapter != BASE_ROW else None)
        ids = row.prompt_ids + row.continuation_ids
        values = self.run(server.token_logprobs(self._model_on(server, row), ids), cancel)
        return [(float(value), []) for value in values[len(row.prompt_ids):]]

    def _least_busy(self, adapter: str | None) -> RemoteServer:
        serving = [s for s in self.servers if adapter is None or any(m.id == adapter for m in s.models)]
        if not serving:
            raise ArenaError(f"no backend server serves '{adapter}' any more: pick it again after a rescan")
        return min(serving, key=lambda s: s.busy)

    @staticmethod
    def _model_on(server: RemoteServer, row) -> str:
        if row.adapter != BASE_ROW:
            return row.adapter
        return next(m.id for m in server.models if not m.parent)

    # ----- plumbing ----------------------------------------------------------------------------------

    def run(self, coro, cancel: threading.Event | None = None):
        """Run a coroutine on the backend's event loop and wait for it; cancel hangs it up."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        while True:
            try:
                return future.result(timeout=0.05)
            except concurrent.futures.TimeoutError:
                if cancel is not None and cancel.is_set():
                    future.cancel()
                    raise Cancelled() from None

    def info(self) -> dict:
        return {"backend": "remote", "servers": [s.url for s in self.servers], "waiting": 0, "memory_mb": 0.0,
                "busy": {s.url: s.busy for s in self.servers}}

    def close(self) -> None:
        if not self.loop.is_running():  # closed already
            return
        self.run(self.client.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)


def load_tokenizer(spec: str | None, base: RemoteModel, models_dir: Path | None):
    """The remote base's tokenizer, loaded here without weights: --backend-tokenizer, else the base's root or id."""
    from transformers import AutoTokenizer

    candidates = [spec] if spec else [base.root, base.id]
    tried = []
    for candidate in candidates:
        if not candidate:
            continue
        if candidate.lower() in DEFAULT_ALIASES and models_dir is not None:
            candidate = str(ensure_default_model(models_dir))  # the embedded default, converted once
        try:
            return AutoTokenizer.from_pretrained(candidate)
        except Exception as exc:  # transformers raises OSError, ValueError, HTTP errors...
            tried.append(f"{candidate}: {first_line(exc)[:120]}")
    raise ArenaError(f"no tokenizer for the remote base '{base.id}' on this machine ({'; '.join(tried)}): "
                     "give --backend-tokenizer (a local folder or a Hub id with the same tokenizer)")

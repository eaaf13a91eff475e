"""The engine: one base model, many LoRA adapters, one device, any number of callers.

The web app, `inference.py`, the evaluator and the bench all call this one object. A *variant*
is "base" or an adapter name. The engine keeps the adapter registry, builds prompts and checks
requests; a backend (models/backend.py) runs the model: by default the batched backend, one decode
loop that every caller's rows join, or the transformers + PEFT reference (`--backend hf`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import torch

from kernel.config import ArenaError, EngineConfig, SamplingParams

from . import adapters as registry
from . import discovery, fit
from .adapters import WEIGHTS_FILE, AdapterInfo
from .backend import BASE_ROW, Backend, Row, ScoreRow, forced_dtype
from .base import load_base
from .batched.backend import load_batched
from .checkpoints import memory_short, to_unload
from .compatibility import check_compatible
from .device_queue import Cancelled
from .hf_backend import HFBackend
from .prompts import build_prompt_ids, normalize_messages
from .quantization import describe
from .requests import Answer, ChatRequest, Continuation, ScoreRequest, TokenLogprob  # noqa: F401 - re-exported
from .streaming import StreamEvent

log = logging.getLogger(__name__)
BASE = "base"


def make_backend(config: EngineConfig) -> Backend:
    """Load the base and wrap it in the configured backend (here, not in models.backend: the backends
    import the protocol's module, so it must not import them)."""
    if config.backend_urls:
        from .remote import RemoteBackend

        return RemoteBackend(config.backend_urls, config.backend_key, config.backend_tokenizer, config.paths.models)
    if config.backend == "batched":
        return load_batched(config)
    return HFBackend(load_base(config.base, config.paths.models, config.device, config.quantization,
                               dtype=forced_dtype(config.dtype)))


class Engine:
    def __init__(self, backend: Backend, config: EngineConfig):
        self.backend = backend
        self.config = config
        self._adapters: dict[str, AdapterInfo] = {}
        self._lock = threading.Lock()  # guards _adapters; the backend guards the model
        # One registry change at a time: a rescan after a training job and one from the UI must not
        # both load the same new adapter.
        self._changing = threading.RLock()
        self._in_use: Counter[str] = Counter()  # rows streaming per adapter: never unloaded under them

    @classmethod
    def load(cls, config: EngineConfig) -> "Engine":
        engine = cls(make_backend(config), config)
        engine.rescan(load=config.load_adapters)
        return engine

    # ----- adapters -------------------------------------------------------------------------

    @property
    def adapter_dirs(self) -> list[Path]:
        return [self.config.paths.adapters, *self.config.adapter_dirs]

    def adapters(self) -> list[AdapterInfo]:
        with self._lock:
            return list(self._adapters.values())

    def variants(self, checkpoints: bool = True) -> list[str]:
        """What can answer now: the base, every loaded adapter and every checkpoint (loaded on first use);
        checkpoints=False leaves the checkpoints out (the Arena's random battles are between finished models)."""
        servable = [a for a in self.adapters() if a.status == "loaded" or a.lazy and a.status == "available"]
        return [BASE] + [a.name for a in servable if checkpoints or not a.lazy]

    def variant_choices(self) -> list[tuple[str, str]]:
        """(label, variant) for dropdowns: a checkpoint's label shows its step, epoch and losses."""
        infos = {a.name: a for a in self.adapters()}
        return [(discovery.describe(infos[v]) if v in infos else v, v) for v in self.variants()]

    def rescan(self, load: bool = True) -> list[AdapterInfo]:
        """Read the adapter folders again: load new adapters, forget ones whose folder is gone."""
        with self._changing:
            return self._rescan(load)

    def _rescan(self, load: bool) -> list[AdapterInfo]:
        found = {info.name: info for info in discovery.scan(self.adapter_dirs, self.config.paths.jobs)}
        decisions = fit.read_decisions(self.config.paths.adapter_decisions)
        served_elsewhere = getattr(self.backend, "remote_adapters", None)  # a remote server's own adapters
        for info in served_elsewhere() if served_elsewhere else []:
            found.setdefault(info.name, info)
        for name, old in list(self._adapters.items()):
            if name not in found or found[name].path != old.path:
                self.unload_adapter(name, forget=True)
        for name, info in found.items():
            if name in self._adapters:
                continue
            info.decision = decisions.get(name, "")
            with self._lock:
                self._adapters[name] = info
            if info.status != "failed" and load and not info.lazy:
                self.load_adapter(name)
        return self.adapters()

    def load_adapter(self, name: str) -> AdapterInfo:
        """Check and load one known adapter; a failure is recorded on it, never raised."""
        with self._changing:
            return self._load_adapter(name)

    def _load_adapter(self, name: str, replace: bool = False) -> AdapterInfo:
        info = self._get(name)
        if info.status == "loaded" and not replace:
            return info
        # The folder may have changed since the scan.
        fresh = discovery.checkpoint_info(info.path, info.run, info.step) if info.lazy else \
            registry.inspect_folder(info.path, name=name)
        fresh.name, fresh.decision, fresh.last_used = name, info.decision, time.monotonic()
        reason = fresh.reason or self.check_adapter(fresh)
        if not reason and fresh.decision == "do not serve":
            reason = "marked 'do not serve' in the Models tab"
        if not reason:
            reason = self.backend.attach(fresh, replace=replace)
        elif replace:
            self.backend.detach(name)
        if reason:
            fresh.fail(reason)
            log.warning("adapter %s skipped: %s", name, reason)
        else:
            fresh.status = "loaded"
            fresh.served_by = self.backend.serving(name)
        with self._lock:
            self._adapters[name] = fresh
        return fresh

    def check_adapter(self, info: AdapterInfo) -> str:
        """'' when the adapter folder fits this base, else why not (shapes, modules, recorded base)."""
        if self.backend.base.model is None:  # a remote base: its server checks the weights as it loads them
            return ""
        return check_compatible(info, self.backend.base)

    def unload_adapter(self, name: str, forget: bool = False) -> None:
        """Free an adapter's memory; it stays listed (as available) unless forget is set."""
        with self._changing:
            self._unload_adapter(name, forget)

    def _unload_adapter(self, name: str, forget: bool) -> None:
        info = self._get(name)
        if info.status == "loaded":
            self.backend.detach(name)
            info.status = "available"
            info.served_by = ""
        if forget:
            with self._lock:
                self._adapters.pop(name, None)

    def decide(self, name: str, decision: str | None) -> AdapterInfo:
        """Remember "serve anyway" / "do not serve" (None forgets) for an adapter, and apply it now."""
        with self._changing:
            info = self._get(name)
            fit.write_decision(self.config.paths.adapter_decisions, name, decision)
            info.decision = decision or ""
            if info.lazy and info.status != "loaded" and decision != "do not serve":
                info.status, info.reason = "available", ""
                return info
            return self._load_adapter(name, replace=info.status == "loaded")

    def reload_adapter(self, name: str) -> AdapterInfo:
        """Load again from disk, e.g. after retraining under the same name."""
        with self._changing:
            return self._load_adapter(name, replace=True)

    def delete_adapter(self, name: str) -> Path:
        """Unload and move the folder to the trash folder (recoverable), never rm -rf."""
        with self._changing:
            info = self._get(name)
            self.unload_adapter(name, forget=True)
            return self.config.paths.move_to_trash(info.path)

    def _get(self, name: str) -> AdapterInfo:
        with self._lock:
            info = self._adapters.get(name)
        if info is None:
            raise ArenaError(f"unknown adapter '{name}'")
        return info

    # ----- generation -----------------------------------------------------------------------

    def stream(self, requests: list[ChatRequest], cancel: threading.Event | None = None) -> Iterator[StreamEvent]:
        """Answer every request, streaming; closing the iterator early cancels the generation."""
        rows: list[Row] = []
        try:  # each row's adapter is in use from here: a later row's checkpoint must not unload it
            for index, request in enumerate(requests):
                rows.append(self._row(index, request))
                self._use([rows[-1].adapter], 1)
            return self._counted(self.backend.stream(rows, cancel), [r.adapter for r in rows])
        except BaseException:
            self._use([r.adapter for r in rows], -1)
            raise

    @property
    def context_limit(self) -> int:
        return self.backend.context_limit

    @property
    def waiting(self) -> int:
        """Rows waiting for room on the device right now."""
        return self.backend.waiting

    @property
    def tokenizer(self):
        return self.backend.base.tokenizer

    @property
    def base_name(self) -> str:
        return self.backend.base.name

    @property
    def base_parameters(self) -> int:
        return self.backend.base.parameters

    def _row(self, index: int, request: ChatRequest) -> Row:
        adapter = self._adapter_for(request.variant)
        if request.prompt_ids is not None:
            ids = list(request.prompt_ids)
        else:
            ids = build_prompt_ids(self.tokenizer, normalize_messages(request.messages, request.system))
        if not ids:
            raise ArenaError("the prompt is empty")
        if len(ids) >= self.context_limit:
            raise ArenaError(
                f"the conversation is {len(ids)} tokens, this server answers up to {self.context_limit}: "
                "clear the chat or shorten the message"
            )
        return Row(index, request.variant, adapter, ids, request.params)

    def check_variant(self, variant: str) -> None:
        """Raise ArenaError naming the variant when it cannot answer (unknown, or an adapter not loaded)."""
        self._adapter_for(variant)

    def _adapter_for(self, variant: str) -> str:
        if variant == BASE:
            return BASE_ROW
        with self._lock:
            info = self._adapters.get(variant)
        if info is None:
            raise ArenaError(f"unknown variant '{variant}': choose from {', '.join(self.variants())}")
        if info.lazy:
            info = self._load_checkpoint(variant)
        if info.status != "loaded":
            why = f": {info.reason}" if info.reason else " (not loaded)"
            raise ArenaError(f"adapter '{variant}' cannot answer{why}")
        return variant

    def _load_checkpoint(self, name: str) -> AdapterInfo:
        """Load a checkpoint on first use, unloading idle ones (least recently used first) to make room."""
        with self._changing:
            info = self._get(name)
            info.last_used = time.monotonic()
            loading = info.status == "available"
            self._make_room(name, loading)
            return self._load_adapter(name) if loading else info

    def _make_room(self, current: str, loading: bool) -> None:
        """Unload the checkpoints models.checkpoints picks: over the limit, long unused, or idle while
        memory runs short; never one that rows are streaming from."""
        now = time.monotonic()
        loaded = [a for a in self.adapters() if a.lazy and a.status == "loaded" and a.name != current]
        short = loading and memory_short(self.backend.base.device)
        with self._lock:
            chosen = to_unload(loaded, self._in_use, self.config.max_loaded_checkpoints, now, short)
        for info in chosen:
            log.info("unloading checkpoint %s (unused for %.0f s)", info.name, now - info.last_used)
            self._unload_adapter(info.name, forget=False)

    def _use(self, adapters: list[str], count: int) -> None:
        with self._lock:
            self._in_use.update({a: count for a in adapters})

    def _counted(self, events: Iterator[StreamEvent], adapters: list[str]) -> Iterator[StreamEvent]:
        """The backend's events; the adapters stay marked in use until the stream ends."""
        try:
            yield from events
        finally:
            self._use(adapters, -1)

    # ----- conveniences over stream() ---------------------------------------------------------

    def compare_stream(self, variants: list[str], messages, *, system: str | None = None,
                       params: SamplingParams | None = None, cancel=None) -> Iterator[StreamEvent]:
        params = params or SamplingParams()
        return self.stream([ChatRequest(v, messages, system, params) for v in variants], cancel)

    def compare(self, variants: list[str], messages, **kwargs) -> list[Answer]:
        return self.answers(self.compare_stream(variants, messages, **kwargs), len(variants))

    def answer_each(self, requests: list[ChatRequest], cancel=None) -> list[Answer]:
        """Whole answers to requests that may differ in history (each variant's own earlier answers)."""
        return self.answers(self.stream(requests, cancel), len(requests))

    @staticmethod
    def answers(events: Iterator[StreamEvent], count: int) -> list[Answer]:
        answers: list[Answer | None] = [None] * count
        for event in events:
            if event.done:
                answers[event.index] = Answer(event.variant, event.text, event.stats)
        return answers

    def generate_stream(self, variant: str, messages, **kwargs) -> Iterator[StreamEvent]:
        return self.compare_stream([variant], messages, **kwargs)

    def generate(self, variant: str, messages, **kwargs) -> Answer:
        return self.compare([variant], messages, **kwargs)[0]

    def loglikelihood(self, variant: str, messages, continuations: list[str], system: str | None = None,
                      cancel: threading.Event | None = None) -> list[Continuation]:
        """Log-probability of each continuation as the assistant's answer (multiple choice, as lm-eval scores it)."""
        adapter = self._adapter_for(variant)
        prompt = build_prompt_ids(self.tokenizer, normalize_messages(messages, system))
        options = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        if any(not ids for ids in options):
            raise ArenaError("every choice needs some text")
        self._use([adapter], 1)
        try:
            scores = self.backend.loglikelihood([ScoreRow(adapter, prompt, ids) for ids in options], cancel)
        finally:
            self._use([adapter], -1)
        return [Continuation(text, logprob, len(ids)) for text, logprob, ids in zip(continuations, scores, options)]

    def loglikelihood_batch(self, requests: list[ScoreRequest], batch_size: int = 16,
                            cancel: threading.Event | None = None) -> list[Continuation]:
        """Log-probabilities of many (variant, conversation, continuation) rows, each through its own adapter.
        Rows go to the backend `batch_size` at a time, sorted by length so little of each pass is padding; the
        batched backend mixes adapters within a pass, the reference groups them."""
        rows = []
        for request in requests:
            ids = self.tokenizer(request.continuation, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ArenaError("every continuation needs some text")
            prompt = build_prompt_ids(self.tokenizer, normalize_messages(request.messages, request.system))
            rows.append(ScoreRow(self._adapter_for(request.variant), prompt, ids))
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt_ids) + len(rows[i].continuation_ids))
        scores: list[float] = [0.0] * len(rows)
        for start in range(0, len(order), batch_size):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            chunk = order[start:start + batch_size]
            for i, value in zip(chunk, self.backend.loglikelihood([rows[i] for i in chunk], cancel)):
                scores[i] = value
        return [Continuation(r.continuation, score, len(row.continuation_ids))
                for r, score, row in zip(requests, scores, rows)]

    def token_logprobs(self, variant: str, ids: list[int], top: int = 0,
                       cancel: threading.Event | None = None) -> list[TokenLogprob]:
        """Each token's log-probability after the tokens before it (from the second token on), with
        the `top` likeliest alternatives: what an OpenAI `echo` + `logprobs` request reports."""
        adapter = self._adapter_for(variant)
        if len(ids) > self.context_limit:
            raise ArenaError(f"the prompt is {len(ids)} tokens, this server answers up to {self.context_limit}")
        if len(ids) < 2:
            return []
        scored = self.backend.token_logprobs(ScoreRow(adapter, ids[:1], ids[1:]), top, cancel)
        return [TokenLogprob(token, logprob, alternatives) for token, (logprob, alternatives) in zip(ids[1:], scored)]

    def variant_identity(self, variant: str) -> tuple:
        """What identifies the weights a variant answers with: the base (and its precision), an adapter's file.

        The evaluation hashes it to reuse stored answers only while it is unchanged.
        """
        base = self.backend.base
        # Stored fp32 answers keep their keys from before the precision was a choice.
        precision = () if base.dtype == torch.float32 else (str(base.dtype),)
        precision += (base.quantization,) if base.quantization else ()  # a quantised base answers differently
        if variant == BASE:
            return (base.name, base.path, *precision)
        with self._lock:
            info = self._adapters.get(variant)
        weights = Path(info.path) / WEIGHTS_FILE if info else None
        stat = weights.stat() if weights and weights.exists() else None
        return (base.name, variant, stat.st_size if stat else 0, stat.st_mtime_ns if stat else 0, *precision)

    def info(self) -> dict:
        """What the Models tab shows about the base and how it is served."""
        base = self.backend.base
        return {
            "name": base.name, "path": base.path, "parameters": base.parameters,
            "dtype": str(base.dtype).replace("torch.", ""), "device": str(base.device),
            "quantization": describe(base.model) if base.quantization else "none",
            "memory_saved_mb": round(base.saved_bytes / 2**20, 1), "load_seconds": round(base.load_seconds, 2),
            "notes": base.notes, **self.backend.info(),
        }

    def close(self) -> None:
        """Stop the backend's worker thread (tests and the bench load several engines in one process)."""
        self.backend.close()

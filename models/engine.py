"""The engine: one base model, many LoRA adapters, one device, any number of callers.

The web app, `inference.py` and the evaluator all call this module. A *variant* is "base" or an
adapter name. `compare` answers several variants in one batched generate (PEFT mixed-adapter
batch) and streams each row on its own; every call holds the device queue from start to end, so
no call sees another call's adapter.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from . import adapters as registry
from .adapters import AdapterInfo, check_compatible
from kernel.errors import first_line

from .base import LoadedBase, load_base
from kernel.config import ArenaError, EngineConfig, SamplingParams
from .device_queue import Cancelled, DeviceQueue
from .prompts import build_prompt_ids, normalize_messages
from .runner import BASE_ROW, HFRunner, Row
from .streaming import GenerationStats, StreamEvent

log = logging.getLogger(__name__)
BASE = "base"


@dataclass
class ChatRequest:
    variant: str
    messages: list[dict] | str
    system: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    prompt_ids: list[int] | None = None  # raw prompt tokens, no chat template (the API's /v1/completions)


@dataclass
class Continuation:
    text: str
    logprob: float  # sum over the continuation's tokens
    tokens: int


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the likeliest tokens at this position, most likely first


@dataclass
class Answer:
    variant: str
    text: str
    stats: GenerationStats


class Engine:
    def __init__(self, base: LoadedBase, config: EngineConfig):
        self.base = base
        self.config = config
        self.device = DeviceQueue()
        self.runner = HFRunner(base.model, base.tokenizer, base.device)
        self._peft = None  # a PeftModel around base.model once the first adapter is loaded
        self._adapters: dict[str, AdapterInfo] = {}
        self._lock = threading.Lock()  # guards _adapters; the device queue guards the model
        # One registry change at a time: a rescan after a training job and one from the UI must not
        # both load the same new adapter.
        self._changing = threading.RLock()

    @classmethod
    def load(cls, config: EngineConfig) -> "Engine":
        base = load_base(config.base, config.models_dir, config.device, config.quantization)
        engine = cls(base, config)
        engine.rescan(load=config.load_adapters)
        return engine

    # ----- adapters -------------------------------------------------------------------------

    @property
    def adapter_dirs(self) -> list[Path]:
        return [self.config.adapters_dir, *self.config.adapter_dirs]

    def adapters(self) -> list[AdapterInfo]:
        with self._lock:
            return list(self._adapters.values())

    def variants(self) -> list[str]:
        """What can answer now: the base and every loaded adapter."""
        return [BASE] + [a.name for a in self.adapters() if a.status == "loaded"]

    def rescan(self, load: bool = True) -> list[AdapterInfo]:
        """Read the adapter folders again: load new adapters, forget ones whose folder is gone."""
        with self._changing:
            return self._rescan(load)

    def _rescan(self, load: bool) -> list[AdapterInfo]:
        found = {info.name: info for info in registry.scan(self.adapter_dirs)}
        for name, old in list(self._adapters.items()):
            if name not in found or found[name].path != old.path:
                self.unload_adapter(name, forget=True)
        for name, info in found.items():
            if name in self._adapters:
                continue
            with self._lock:
                self._adapters[name] = info
            if info.status != "failed" and load:
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
        fresh = registry.inspect_folder(info.path)  # the folder may have changed since the scan
        reason = fresh.reason or check_compatible(fresh, self.base)
        if replace or not reason:
            # Old weights out and new ones in within one device turn: a request that was checked
            # against the old adapter and waits its turn finds the name still there.
            with self.device.hold():
                if replace:
                    self._detach(name)
                if not reason:
                    reason = self._attach(fresh)
        if reason:
            fresh.fail(reason)
            log.warning("adapter %s skipped: %s", name, reason)
        else:
            fresh.status = "loaded"
        fresh.name = name
        with self._lock:
            self._adapters[name] = fresh
        return fresh

    def unload_adapter(self, name: str, forget: bool = False) -> None:
        """Free an adapter's memory; it stays listed (as available) unless forget is set."""
        with self._changing:
            self._unload_adapter(name, forget)

    def _unload_adapter(self, name: str, forget: bool) -> None:
        info = self._get(name)
        if info.status == "loaded":
            with self.device.hold():
                self._detach(name)
            info.status = "available"
        if forget:
            with self._lock:
                self._adapters.pop(name, None)

    def reload_adapter(self, name: str) -> AdapterInfo:
        """Load again from disk, e.g. after retraining under the same name."""
        with self._changing:
            return self._load_adapter(name, replace=True)

    def delete_adapter(self, name: str) -> Path:
        """Unload and move the folder to the trash folder (recoverable), never rm -rf."""
        with self._changing:
            info = self._get(name)
            self.unload_adapter(name, forget=True)
            trash = self.config.trash_dir / f"{info.path.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(info.path), trash)
            return trash

    def _get(self, name: str) -> AdapterInfo:
        with self._lock:
            info = self._adapters.get(name)
        if info is None:
            raise ArenaError(f"unknown adapter '{name}'")
        return info

    def _attach(self, info: AdapterInfo) -> str:
        """Load weights into the shared PeftModel; returns a reason on failure. Device must be held."""
        from peft import PeftConfig, PeftModel

        try:
            if self._peft is None:
                config = PeftConfig.from_pretrained(str(info.path))
                config.inference_mode = True
                self._peft = PeftModel(self.base.model, config, adapter_name=info.name)
            self._peft.load_adapter(str(info.path), adapter_name=info.name, is_trainable=False)
            self._peft.eval()
        except Exception as exc:  # PEFT raises many kinds; the adapter is skipped, the server goes on
            self._detach(info.name)
            return f"PEFT could not load it: {first_line(exc)[:300]}"
        info.trainable_parameters = sum(
            p.numel() for n, p in self._peft.named_parameters() if f".{info.name}." in n
        )
        return ""

    def _detach(self, name: str) -> None:
        if self._peft is None or name not in self._peft.peft_config:
            return
        if len(self._peft.peft_config) == 1:
            self._peft.unload()  # removes the LoRA layers: base.model is plain again
            self._peft = None
        else:
            self._peft.delete_adapter(name)
        gc.collect()
        if self.base.device.type == "cuda":
            torch.cuda.empty_cache()

    # ----- generation -----------------------------------------------------------------------

    def stream(self, requests: list[ChatRequest], cancel: threading.Event | None = None) -> Iterator[StreamEvent]:
        """Answer every request, streaming; closing the iterator early cancels the generation."""
        rows = [self._row(i, r) for i, r in enumerate(requests)]
        stop = threading.Event()
        events: queue.Queue = queue.Queue()
        watcher = _either(stop, cancel)
        worker = threading.Thread(target=self._work, args=(rows, requests, events.put, watcher), daemon=True)
        worker.start()
        try:
            while True:
                event = events.get()
                if event is None:
                    return
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            stop.set()  # the caller left (closed tab, broke out of the loop): free the device

    def _work(self, rows, requests, emit, cancel) -> None:
        queued = time.perf_counter()
        try:
            with self.device.hold(cancel):
                wait = time.perf_counter() - queued
                self._check_still_loaded(rows)
                for group, mixed in self._groups(rows, requests):
                    if cancel.is_set():
                        break
                    self._run_group(group, requests[group[0].index].params, emit, cancel, wait, mixed)
        except Cancelled:
            for row in rows:
                emit(StreamEvent(row.index, row.variant, "", "", done=True,
                                 stats=GenerationStats(finish_reason="cancelled")))
        except torch.OutOfMemoryError:
            emit(ArenaError("out of memory on the device: try fewer columns or fewer new tokens"))
        except Exception as exc:
            emit(exc)
        finally:
            emit(None)

    def _check_still_loaded(self, rows: list[Row]) -> None:
        """An adapter unloaded or deleted while this request waited for the device: say so, by name."""
        loaded = set(self._peft.peft_config) if self._peft is not None else set()
        for row in rows:
            if row.adapter != BASE_ROW and row.adapter not in loaded:
                raise ArenaError(f"adapter '{row.variant}' was unloaded while this request waited: "
                                 "pick it again and resend")

    def _groups(self, rows: list[Row], requests: list[ChatRequest]):
        """Rows with the same sampling settings share one batch; DoRA rows run alone (PEFT can't mix them)."""
        batches: dict[tuple, list[Row]] = {}
        alone = []
        for row in rows:
            info = self._adapters.get(row.variant)
            if info is not None and info.use_dora:
                alone.append(([row], False))
            else:
                key = tuple(sorted(requests[row.index].params.to_dict().items()))
                batches.setdefault(key, []).append(row)
        return [(group, True) for group in batches.values()] + alone

    @property
    def context_limit(self) -> int:
        return getattr(self.base.model.config, "max_position_embeddings", None) or 2048

    def _run_group(self, group, params, emit, cancel, wait, mixed) -> None:
        # A long history leaves less room: answer up to the end of the context rather than fail.
        room = self.context_limit - max(len(row.prompt_ids) for row in group)
        if params.max_new_tokens > room:
            params = dataclasses.replace(params, max_new_tokens=room)
        adapters = {row.adapter for row in group}
        if self._peft is None or not mixed or len(adapters) > 1:
            if not mixed:
                self._peft.set_adapter(group[0].adapter)
            self.runner.run(group, params, self._peft, emit, cancel, wait, mixed=mixed)
        elif adapters == {BASE_ROW}:
            # Every row wants the base: switch LoRA off rather than pay for PEFT's per-row routing (~10%).
            with self._peft.disable_adapter():
                self.runner.run(group, params, self._peft, emit, cancel, wait, mixed=False)
        else:  # one adapter for every row: the plain active-adapter path is faster than a mixed batch
            self._peft.set_adapter(group[0].adapter)
            self.runner.run(group, params, self._peft, emit, cancel, wait, mixed=False)

    def _row(self, index: int, request: ChatRequest) -> Row:
        adapter = self._adapter_for(request.variant)
        if request.prompt_ids is not None:
            ids = list(request.prompt_ids)
        else:
            ids = build_prompt_ids(self.base.tokenizer, normalize_messages(request.messages, request.system))
        if not ids:
            raise ArenaError("the prompt is empty")
        if len(ids) >= self.context_limit:
            raise ArenaError(
                f"the conversation is {len(ids)} tokens, this model's context is {self.context_limit}: "
                "clear the chat or shorten the message"
            )
        return Row(index, request.variant, adapter, ids)

    def check_variant(self, variant: str) -> None:
        """Raise ArenaError naming the variant when it cannot answer (unknown, or an adapter not loaded)."""
        self._adapter_for(variant)

    def _adapter_for(self, variant: str) -> str:
        if variant == BASE:
            return BASE_ROW
        info = self._adapters.get(variant)
        if info is None:
            raise ArenaError(f"unknown variant '{variant}': choose from {', '.join(self.variants())}")
        if info.status != "loaded":
            why = f": {info.reason}" if info.reason else " (not loaded)"
            raise ArenaError(f"adapter '{variant}' cannot answer{why}")
        return variant

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
        prompt = build_prompt_ids(self.base.tokenizer, normalize_messages(messages, system))
        options = [self.base.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        if any(not ids for ids in options):
            raise ArenaError("every choice needs some text")
        with self.device.hold(cancel):
            with self._adapter_active(adapter):
                scores = self.runner.score(prompt, options)
        return [Continuation(text, logprob, len(ids)) for text, (logprob, ids) in
                zip(continuations, zip(scores, options))]

    def token_logprobs(self, variant: str, ids: list[int], top: int = 0,
                       cancel: threading.Event | None = None) -> list[TokenLogprob]:
        """Each token's log-probability after the tokens before it (from the second token on), with
        the `top` likeliest alternatives: what an OpenAI `echo` + `logprobs` request reports."""
        adapter = self._adapter_for(variant)
        if len(ids) > self.context_limit:
            raise ArenaError(f"the prompt is {len(ids)} tokens, this model's context is {self.context_limit}")
        with self.device.hold(cancel):
            with self._adapter_active(adapter):
                scored = self.runner.token_logprobs(ids, top)
        return [TokenLogprob(token, logprob, alternatives) for token, (logprob, alternatives) in zip(ids[1:], scored)]

    @property
    def tokenizer(self):
        return self.base.tokenizer

    @contextlib.contextmanager
    def _adapter_active(self, adapter: str):
        """Plain forward passes (no generate): route through one adapter, or none for the base."""
        if self._peft is None:
            yield
        elif adapter == BASE_ROW:
            with self._peft.disable_adapter():
                yield
        else:
            self._peft.set_adapter(adapter)
            yield

    def info(self) -> dict:
        """What the Models tab shows about the base."""
        memory = (torch.cuda.memory_allocated(self.base.device) if self.base.device.type == "cuda"
                  else sum(p.numel() * p.element_size() for p in self.base.model.parameters()))
        return {
            "name": self.base.name, "path": self.base.path, "parameters": self.base.parameters,
            "dtype": str(self.base.dtype).replace("torch.", ""), "device": str(self.base.device),
            "quantization": self.base.quantization or "none", "memory_mb": round(memory / 2**20, 1),
            "load_seconds": round(self.base.load_seconds, 2), "notes": self.base.notes,
            "waiting": self.device.waiting,
        }


class _either:
    """An Event-like view that is set when either of two events is set."""

    def __init__(self, a: threading.Event, b: threading.Event | None):
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return self.a.is_set() or (self.b is not None and self.b.is_set())

    def set(self) -> None:
        self.a.set()

"""The default backend: every caller's rows share one decode loop, each row with its own adapter.

It builds the pieces (forward pass over the model's own weights, KV cache, stacked LoRA weights,
CUDA graphs on a GPU) and hands rows to the scheduler thread. An adapter's own lm_head or
embed_tokens copy and LoRA on embed_tokens are served here too, for its rows only (own_modules.py).
Adapters it cannot serve in the stacks (DoRA, bias, other fully trained modules, a rank above the
fixed CUDA stack) are attached to a reference backend on the same model instead, and their rows are
answered there; the Models tab says which path serves each adapter, and why.
"""
from __future__ import annotations

import logging
import threading
from typing import Iterator

from transformers import AutoConfig

from kernel.config import ArenaError, EngineConfig
from kernel.errors import first_line

from ..adapters import AdapterInfo
from ..backend import Backend, Row, ScoreRow, TokenScore, memory_mb
from ..base import LoadedBase, hub_offline, load_base, resolve_base
from ..hf_backend import HFBackend
from ..streaming import StreamEvent
from .devices import choose_dtype, default_kv_mb, default_rows
from .jobs import Call, Job
from .kv_cache import KVCache, bytes_per_token, plan_cache
from .llama import SUPPORTED, LlamaForward, sliding_window, unsupported_reason
from .lora import LoraStacks, group_shapes, read_lora
from .scheduler import Scheduler

log = logging.getLogger(__name__)
CHUNK_TOKENS = {"cpu": 256, "cuda": 2048}  # prompt tokens prefilled per loop turn: the most a decode step waits


def load_batched(config: EngineConfig) -> Backend:
    """The batched backend, or the reference with a note saying why the base cannot be batched here."""
    reason = _config_refusal(config)
    dtype, why = choose_dtype(config.dtype, config.device, batched=not reason)
    base = load_base(config.base, config.paths.models, config.device, config.quantization, dtype=dtype)
    if why:
        base.notes.append(why)
    reason = reason or unsupported_reason(base.model)
    if not reason:
        return BatchedBackend(base, config)
    base.notes.append(f"the batched backend cannot serve this base ({reason}): every request uses the reference path")
    log.warning(base.notes[-1])
    return HFBackend(base)


def _config_refusal(config: EngineConfig) -> str:
    """Why the batched loop cannot serve this base, read from its config before loading ('' = it can)."""
    if config.quantization:  # bitsandbytes layers, on the CPU as on CUDA: the reference path runs them
        return f"{config.quantization} quantization"
    try:
        _, source = resolve_base(config.base, config.paths.models)
        kind = AutoConfig.from_pretrained(source, local_files_only=hub_offline()).model_type
    except Exception:  # an unloadable base: load_base will say why in its own words
        return ""
    return "" if kind in SUPPORTED else f"architecture '{kind}' is not one of {', '.join(SUPPORTED)}"


class BatchedBackend:
    name = "batched"

    def __init__(self, base: LoadedBase, config: EngineConfig):
        self.base = base
        model, device = base.model, base.device
        self.forward = LlamaForward(model)
        self.reference = HFBackend(base)  # same model object: for adapters the stacks cannot hold
        layers = len(self.forward.layers)
        context = getattr(model.config, "max_position_embeddings", None) or 2048
        context = min(context, sliding_window(model.config) or context)
        per_token = bytes_per_token(layers, self.forward.kv_heads, self.forward.head_dim, self.forward.dtype)
        rows = config.max_batch or default_rows(device)
        budget = config.kv_budget_mb or default_kv_mb(device, rows, context, per_token)
        self.cache = KVCache(plan_cache(budget, rows, context, per_token), layers, self.forward.kv_heads,
                             self.forward.head_dim, self.forward.dtype, device)
        fixed = device.type == "cuda"  # captured graphs need the stacks at fixed addresses
        self.stacks = LoraStacks(group_shapes(model.model.layers[0]), layers, self.forward.dtype, device,
                                 slots=config.max_loras + 1 if fixed else 4,
                                 rank=config.max_lora_rank if fixed else 8, fixed=fixed)
        self.graphs = self._capture(config) if fixed else None
        self.scheduler = Scheduler(self.forward, self.cache, self.stacks, base.tokenizer,
                                   self.reference.runner.eos_ids, device, CHUNK_TOKENS.get(device.type, 256),
                                   self.graphs)
        self._routes: dict[str, str] = {}  # adapter -> '' (served here) or why the reference path serves it
        self._lock = threading.Lock()

    def _capture(self, config: EngineConfig):
        if not config.cuda_graphs:
            return None
        from .cuda_graphs import DecodeGraphs

        graphs = DecodeGraphs(self.forward, self.cache, self.stacks, self.base.device)
        if not graphs.capture():
            self.base.notes.append(f"CUDA graph capture failed, decoding eagerly: {graphs.failure}")
            return None
        return graphs

    @property
    def context_limit(self) -> int:
        return self.cache.slot_len

    @property
    def waiting(self) -> int:
        return self.scheduler.waiting + self.reference.waiting

    # ----- adapters -------------------------------------------------------------------------

    def attach(self, info: AdapterInfo, replace: bool = False) -> str:
        try:
            weights = read_lora(info.path, len(self.forward.layers))
        except Exception as exc:  # unreadable weights: the registry shows the reason, the server goes on
            return f"cannot read the adapter's weights: {first_line(exc)[:300]}"
        why = weights if isinstance(weights, str) else (
            weights.modules.mismatch(*self.forward.embed.shape) or self.stacks.refusal(weights))
        if why:
            reason = self.reference.attach(info, replace=replace)
            if not reason:
                self.scheduler.command(lambda: self.scheduler.remove_adapter(info.name))
                self._set_route(info.name, why)
            return reason
        if info.name in self.reference.attached:
            self.reference.detach(info.name)
        self.scheduler.command(lambda: self.scheduler.add_adapter(info.name, weights))
        info.trainable_parameters = weights.parameters
        self._set_route(info.name, "")
        return ""

    def detach(self, name: str) -> None:
        with self._lock:
            route = self._routes.pop(name, None)
        if route:
            self.reference.detach(name)
        else:
            self.scheduler.command(lambda: self.scheduler.remove_adapter(name))

    def serving(self, name: str) -> str:
        with self._lock:
            route = self._routes.get(name)
        return "batched" if not route else f"reference: {route}"

    def _set_route(self, name: str, why: str) -> None:
        with self._lock:
            self._routes[name] = why

    def _on_reference(self, adapter: str) -> bool:
        with self._lock:
            return bool(self._routes.get(adapter))

    # ----- generation -----------------------------------------------------------------------

    def stream(self, rows: list[Row], cancel: threading.Event | None = None) -> Iterator[StreamEvent]:
        if not rows:
            return iter(())
        call = Call(cancel, len(rows))
        elsewhere = [row for row in rows if self._on_reference(row.adapter)]
        if elsewhere:
            threading.Thread(target=self._relay, args=(elsewhere, call), daemon=True).start()
        self.scheduler.submit([Job(call, row=row) for row in rows if not self._on_reference(row.adapter)])
        return call.read()

    def _relay(self, rows: list[Row], call: Call) -> None:
        """Rows whose adapter the reference path serves: its events join the call's own."""
        try:
            for event in self.reference.stream(rows, call.cancel):
                call.emit(event)
                if event.done:
                    call.job_done()
        except Exception as exc:
            call.fail(exc)

    def loglikelihood(self, rows: list[ScoreRow], cancel: threading.Event | None = None) -> list[float]:
        for row in rows:
            self._check_length(row)
        here = [i for i, row in enumerate(rows) if not self._on_reference(row.adapter)]
        there = [i for i in range(len(rows)) if i not in set(here)]
        scores = [0.0] * len(rows)
        if there:
            for i, score in zip(there, self.reference.loglikelihood([rows[i] for i in there], cancel)):
                scores[i] = score
        if here:
            for i, job in zip(here, self._score([rows[i] for i in here], cancel)):
                scores[i] = job.logprob
        return scores

    def token_logprobs(self, row: ScoreRow, top: int, cancel: threading.Event | None = None) -> list[TokenScore]:
        self._check_length(row)
        if self._on_reference(row.adapter):
            return self.reference.token_logprobs(row, top, cancel)
        [job] = self._score([row], cancel, top=top)
        return job.token_scores

    def _score(self, rows: list[ScoreRow], cancel, top: int = -1) -> list[Job]:
        """Scoring jobs through the decode loop's prefill; top >= 0 also keeps each token's score."""
        call = Call(cancel, len(rows))
        jobs = [Job(call, score=row, top=top) for row in rows]
        self.scheduler.submit(jobs)
        for _ in call.read():
            pass
        if cancel is not None and cancel.is_set():
            raise ArenaError("scoring was cancelled")
        return jobs

    def _check_length(self, row: ScoreRow) -> None:
        if len(row.prompt_ids) + len(row.continuation_ids) > self.context_limit:
            raise ArenaError(f"a prompt and choice of {len(row.prompt_ids) + len(row.continuation_ids)} "
                             f"tokens is longer than this server's {self.context_limit}")

    def info(self) -> dict:
        graphs = "" if self.graphs is None else f", CUDA graphs at {len(self.graphs.graphs)} shapes"
        plan = self.cache.plan
        return {
            "backend": f"batched (one shared decode loop{graphs})",
            "kv_cache": f"{plan.describe()}, {self.cache.megabytes:.0f} MB",
            "memory_mb": memory_mb(self.base), "waiting": self.waiting,
            "adapters_in_memory": len(self.stacks.used) + len(self.reference.attached),
            "adapter_modules_mb": sum(m.megabytes for m in self.stacks.modules.values()),  # own heads/embeddings
        }

    def close(self) -> None:
        self.scheduler.close()

"""The reference backend: transformers' generate with PEFT's mixed-adapter batches, one call at a time.

Every call holds the device queue from its first token to its last, so no call ever sees another
call's adapter. It serves whatever transformers and PEFT can (any architecture, DoRA, quantized
bases) and is what the batched backend's answers are checked against, token for token.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import queue
import threading
import time
from typing import Iterator

import torch

from kernel.errors import ArenaError
from kernel.errors import first_line

from .adapters import AdapterInfo
from .backend import BASE_ROW, Either, Row, ScoreRow, TokenScore, drain, memory_mb
from .base import LoadedBase
from .device_queue import Cancelled, DeviceQueue
from .module_copies import COPYABLE, split_copies, swapped_in
from .runner import HFRunner
from .streaming import GenerationStats, StreamEvent

log = logging.getLogger(__name__)


class HFBackend:
    name = "hf"

    def __init__(self, base: LoadedBase):
        self.base = base
        self.device = DeviceQueue()
        self.runner = HFRunner(base.model, base.tokenizer, base.device)
        self._peft = None  # a PeftModel around base.model once the first adapter is attached
        self._dora: set[str] = set()
        self._copies: dict[str, dict[str, torch.Tensor]] = {}  # adapter -> its own lm_head/embed_tokens

    @property
    def context_limit(self) -> int:
        return getattr(self.base.model.config, "max_position_embeddings", None) or 2048

    @property
    def waiting(self) -> int:
        return self.device.waiting

    @property
    def attached(self) -> set[str]:
        return set(self._peft.peft_config) if self._peft is not None else set()

    # ----- adapters -------------------------------------------------------------------------

    def attach(self, info: AdapterInfo, replace: bool = False) -> str:
        """Old weights out and new ones in within one device turn: a waiting request finds the name still there."""
        with self.device.hold():
            if replace:
                self._detach(info.name)
            return self._attach(info)

    def detach(self, name: str) -> None:
        with self.device.hold():
            self._detach(name)

    def serving(self, name: str) -> str:
        return "reference"

    def _attach(self, info: AdapterInfo) -> str:
        from peft import PeftConfig, PeftModel

        try:
            config = PeftConfig.from_pretrained(str(info.path))
            config.inference_mode = True
            lora, copies = self._read_whole_modules(info, config)
            if self._peft is None:
                self._peft = PeftModel(self.base.model, config, adapter_name=info.name)
            if lora is None:
                self._peft.load_adapter(str(info.path), adapter_name=info.name, is_trainable=False)
            else:
                self._load_lora_part(info.name, config, lora)
                if copies:
                    self._copies[info.name] = copies
            self._peft.eval()
        except Exception as exc:  # PEFT raises many kinds; the adapter is skipped, the server goes on
            try:
                self._detach(info.name)
            except Exception:  # noqa: BLE001 - a half-built PeftModel: the failure below is what counts
                log.warning("adapter %s: cleaning up after PEFT's failure failed", info.name, exc_info=True)
            return f"PEFT could not load it: {first_line(exc)[:300]}"
        info.trainable_parameters = sum(
            p.numel() for n, p in self._peft.named_parameters() if f".{info.name}." in n
        )
        if info.use_dora:
            self._dora.add(info.name)
        return ""

    @staticmethod
    def _read_whole_modules(info: AdapterInfo, config):
        """(LoRA part, copies) of an adapter that carries whole modules; (None, None) for a plain one."""
        from safetensors.torch import load_file

        from .adapters import WEIGHTS_FILE

        if not config.modules_to_save and not any(m.startswith(COPYABLE) for m in info.carries):
            return None, None
        lora, copies = split_copies(load_file(str(info.path / WEIGHTS_FILE)))
        config.modules_to_save = None  # PEFT must not wrap the shared modules: the copies are swapped in per row
        return lora, copies

    def _load_lora_part(self, name: str, config, lora: dict) -> None:
        from peft import set_peft_model_state_dict

        if name not in self._peft.peft_config:
            self._peft.add_adapter(name, config)
        result = set_peft_model_state_dict(self._peft, lora, adapter_name=name)
        missing = [k for k in result.missing_keys if f".{name}." in k and "lora_" in k]
        if missing:
            raise ArenaError(f"the file has no weights for {missing[0]}")

    def _detach(self, name: str) -> None:
        self._dora.discard(name)
        self._copies.pop(name, None)
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

    def stream(self, rows: list[Row], cancel: threading.Event | None = None) -> Iterator[StreamEvent]:
        stop = threading.Event()
        events: queue.Queue = queue.Queue()
        watcher = Either(stop, cancel)
        worker = threading.Thread(target=self._work, args=(rows, events.put, watcher), daemon=True)
        worker.start()
        try:
            yield from drain(events)
        finally:
            stop.set()  # the caller left (closed tab, broke out of the loop): free the device

    def _work(self, rows: list[Row], emit, cancel) -> None:
        queued = time.perf_counter()

        def waiting(position: int) -> None:
            for row in rows:
                emit(StreamEvent(row.index, row.variant, "", "", queue_position=position,
                                 queue_seconds=time.perf_counter() - queued))
        try:
            with self.device.hold(cancel, on_wait=waiting):
                wait = time.perf_counter() - queued
                self._check_still_loaded(rows)
                for group in self._groups(rows):
                    if cancel.is_set():
                        break
                    self._run_group(group, emit, cancel, wait)
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
        for row in rows:
            if row.adapter != BASE_ROW and row.adapter not in self.attached:
                raise ArenaError(f"adapter '{row.variant}' was unloaded while this request waited: "
                                 "pick it again and resend")

    def _groups(self, rows: list[Row]):
        """Rows with the same sampling settings share one batch. Rows of a DoRA adapter (PEFT can't mix
        them) or of one with its own lm_head/embed_tokens (swapped in for its rows) run as their own batch."""
        batches: dict[tuple[str, str], list[Row]] = {}
        for row in rows:
            own = row.adapter in self._dora or row.adapter in self._copies
            key = (json.dumps(row.params.to_dict(), sort_keys=True), row.adapter if own else "")
            batches.setdefault(key, []).append(row)
        return list(batches.values())

    def _run_group(self, group: list[Row], emit, cancel, wait) -> None:
        # A long history leaves less room: answer up to the end of the context rather than fail.
        params = group[0].params
        room = self.context_limit - max(len(row.prompt_ids) for row in group)
        if params.max_new_tokens > room:
            params = dataclasses.replace(params, max_new_tokens=room)
        adapters = {row.adapter for row in group}
        if self._peft is None or len(adapters) > 1:
            self.runner.run(group, params, self._peft, emit, cancel, wait, mixed=True)
        else:
            # One adapter for every row: the plain active-adapter path is faster than a mixed batch, and
            # for the base, LoRA switched off beats PEFT's per-row routing (~10%).
            with self._adapter_active(group[0].adapter):
                self.runner.run(group, params, self._peft, emit, cancel, wait, mixed=False)

    def loglikelihood(self, rows: list[ScoreRow], cancel: threading.Event | None = None) -> list[float]:
        """Rows grouped by adapter; each group one padded forward pass with that adapter active."""
        scores: list[float] = [0.0] * len(rows)
        by_adapter: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_adapter.setdefault(row.adapter, []).append(i)
        with self.device.hold(cancel):
            missing = {a for a in by_adapter if a != BASE_ROW} - self.attached
            if missing:
                raise ArenaError(f"adapter '{sorted(missing)[0]}' was unloaded while this request waited")
            for adapter, indices in by_adapter.items():
                with self._adapter_active(adapter):
                    group = self.runner.score([(rows[i].prompt_ids, rows[i].continuation_ids) for i in indices])
                for i, score in zip(indices, group):
                    scores[i] = score
        return scores

    def token_logprobs(self, row: ScoreRow, top: int, cancel: threading.Event | None = None) -> list[TokenScore]:
        """One forward pass over prompt + continuation with the row's adapter active."""
        with self.device.hold(cancel):
            if row.adapter != BASE_ROW and row.adapter not in self.attached:
                raise ArenaError(f"adapter '{row.adapter}' was unloaded while this request waited")
            with self._adapter_active(row.adapter):
                return self.runner.token_logprobs(row.prompt_ids, row.continuation_ids, top)

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
            with swapped_in(self.base.model, self._copies.get(adapter, {})):
                yield

    def info(self) -> dict:
        return {"backend": "hf (transformers generate + PEFT, one call at a time)", "memory_mb": memory_mb(self.base),
                "waiting": self.waiting, "adapters_in_memory": len(self.attached)}

    def close(self) -> None:
        pass

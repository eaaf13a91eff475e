"""The decode loop: one thread owns the model and serves every caller's rows together.

Each turn of the loop: take new jobs and adapter commands, drop what was cancelled, admit waiting
jobs into free KV slots (first come, first served), prefill one chunk of the admitted prompts,
then run one decode step for every row that is answering. So a row joins the batch between two
steps, leaves it the step it finishes (its slot free at once), and a long prompt delays the
others by one chunk at most. Adapter loads and unloads are commands run between two steps.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch

from kernel.errors import ArenaError

from ..backend import BASE_ROW, top_tokens
from ..streaming import RowText, StreamEvent
from .jobs import Call, Job
from .kv_cache import KVCache
from .llama import Batch, LlamaForward
from .lora import LoraBatch, LoraStacks, LoraWeights
from .own_modules import ModuleRows
from .sampler import RowSampler, pick_tokens

log = logging.getLogger(__name__)
PLACE_EVERY_S = 1.0  # how often a waiting row hears its place and time waited even if unchanged


@dataclass
class _Command:
    fn: Callable[[], object]
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None


class Scheduler:
    def __init__(self, forward: LlamaForward, cache: KVCache, stacks: LoraStacks, tokenizer, eos_ids: set[int],
                 device: torch.device, chunk_tokens: int, graphs=None):
        self.forward, self.cache, self.stacks = forward, cache, stacks
        self.tokenizer, self.eos_ids, self.device = tokenizer, eos_ids, device
        self.chunk_tokens = chunk_tokens
        self.graphs = graphs  # captured decode steps (CUDA), or None for eager
        self.steps = 0
        self._inbox: queue.Queue = queue.Queue()
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: list[Job] = []  # admitted, in admission order
        self._adapters: dict[str, int] = {}  # adapter name -> its slot in the stacks
        self._users: collections.Counter[int] = collections.Counter()  # stack slot -> rows using it
        self._draining: set[int] = set()  # unloaded while rows still use them: freed when the last one ends
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="batched-decode-loop", daemon=True)
        self._thread.start()
        # At interpreter exit, let the loop finish its step: killing it inside a torch op aborts the process.
        weakref.finalize(self, _stop, self._inbox, self._thread)

    # ----- the callers' side (any thread) -----------------------------------------------------

    def submit(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._inbox.put(job)

    def command(self, fn: Callable[[], object]):
        """Run fn on the loop's thread between two steps and return its result."""
        if not self._thread.is_alive():
            raise ArenaError("the decode loop has stopped; restart the server")
        box = _Command(fn)
        self._inbox.put(box)
        box.done.wait()
        if box.error is not None:
            raise box.error
        return box.result

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def close(self) -> None:
        self._closing = True
        _stop(self._inbox, self._thread)

    # ----- adapters (run as commands) ---------------------------------------------------------

    def add_adapter(self, name: str, weights: LoraWeights) -> None:
        slot = self.stacks.add(name, weights)
        old = self._adapters.get(name)
        self._adapters[name] = slot  # rows admitted from now on get the new weights
        if old is not None:
            self._release(old)

    def remove_adapter(self, name: str) -> None:
        old = self._adapters.pop(name, None)
        if old is not None:
            self._release(old)

    def _release(self, slot: int) -> None:
        if self._users[slot] == 0:
            self.stacks.remove(slot)
        else:  # rows admitted with it finish with it
            self._draining.add(slot)

    # ----- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while not self._closing:
                self._take_inbox(block=not self._running and not self._waiting)
                try:
                    self._turn()
                except Exception as exc:  # a bug must not hang every caller: fail what runs, keep serving
                    log.exception("decode loop turn failed")
                    for job in list(self._running):
                        self._fail(job.call, ArenaError(f"generation failed: {_one_line(exc)}"))

    def _take_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if isinstance(item, Job):
                self._waiting.append(item)
            elif item is None:
                self._closing = True
            elif isinstance(item, _Command):
                try:
                    item.result = item.fn()
                except BaseException as exc:  # handed to the caller, who says it in its own words
                    item.error = exc
                item.done.set()
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _turn(self) -> None:
        self._drop_cancelled()
        self._admit()
        self._tell_places()
        if any(not job.prefilled for job in self._running):
            self._guarded(self._prefill_chunk)
        if any(job.prefilled and job.row is not None for job in self._running):
            self._guarded(self._decode_step)

    def _guarded(self, step: Callable[[], list[Job]]) -> None:
        """Out of memory fails the newest row of the step (one line to its caller); the others go on."""
        try:
            step()
        except Exception as exc:
            if not _is_oom(exc):
                raise
            newest = self._running[-1]
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self._fail(newest.call, ArenaError("out of memory on the device for this request: try a shorter "
                                               "conversation, fewer new tokens or fewer columns"))

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._waiting if j.call.cancel.is_set() or j.call.failed]:
            self._waiting.remove(job)
            self._end(job, "cancelled")
        for job in [j for j in self._running if j.call.cancel.is_set() or j.call.failed]:
            self._end(job, "cancelled")

    def _admit(self) -> None:
        while self._waiting and self.cache.free:
            job = self._waiting.popleft()
            if job.adapter == BASE_ROW:
                job.adapter_slot = 0
            elif job.adapter in self._adapters:
                job.adapter_slot = self._adapters[job.adapter]
            else:
                name = job.row.variant if job.row is not None else job.adapter
                self._fail(job.call, ArenaError(f"adapter '{name}' was unloaded while this request waited: "
                                                "pick it again and resend"))
                continue
            job.slot = self.cache.take()
            self._users[job.adapter_slot] += 1
            job.started = time.perf_counter()
            if job.row is not None:
                params = job.row.params
                job.max_new = min(params.max_new_tokens, self.cache.slot_len - len(job.row.prompt_ids))
                job.sampler = RowSampler(params, job.row.prompt_ids, self.device)
                job.text = RowText(self.tokenizer, params.stop)
            self._running.append(job)

    def _tell_places(self) -> None:
        now = time.perf_counter()
        for place, job in enumerate(self._waiting, 1):
            if job.row is not None and (place != job.told_place or now - job.told_at >= PLACE_EVERY_S):
                job.told_place, job.told_at = place, now
                job.call.emit(job.waiting_event(place, now))

    # ----- prefill ---------------------------------------------------------------------------

    def _prefill_chunk(self) -> None:
        """Up to chunk_tokens prompt tokens (padding counted) of the admitted jobs, oldest first."""
        pending = [job for job in self._running if not job.prefilled]
        width = min(len(pending[0].tokens_in) - pending[0].fed, self.chunk_tokens)
        chosen = []
        for job in pending:
            if chosen and (len(chosen) + 1) * width > self.chunk_tokens:
                break
            chosen.append((job, min(len(job.tokens_in) - job.fed, width)))
        width = max(n for _, n in chosen)
        batch, keep, uses = self._chunk_batch(chosen, width)
        logits = self.forward(batch, self.cache, keep)
        now = time.perf_counter()
        row = 0
        for job, count, targets in uses:
            # A chunk cut short by a shorter job's width may hold none of a scoring job's continuation.
            if job.row is None and count:
                picked = torch.log_softmax(logits[row:row + count].float(), dim=-1)
                values = picked[torch.arange(count), torch.tensor(targets, dtype=torch.long, device=self.device)]
                job.logprob += float(values.sum())
                if job.top >= 0:
                    job.token_scores += zip(values.tolist(), top_tokens(picked, job.top))
            row += count
        for job, n in chosen:
            job.fed += n
        firsts = [(job, row) for (job, count, _), row in zip(uses, _offsets(uses)) if job.row is not None]
        if firsts:
            tokens = pick_tokens([job.sampler for job, _ in firsts], logits[[row for _, row in firsts]])
            for (job, _), token in zip(firsts, tokens):
                self._take(job, token, now)
        for job, _ in chosen:
            if job.row is None and job.prefilled:
                self._end(job, "")

    def _chunk_batch(self, chosen: list[tuple[Job, int]], width: int):
        """The padded [rows, width] batch, which logits to keep, and what each job does with its kept rows."""
        ids, positions, w_slots, w_pos, w_rows, keep, uses = [], [], [], [], [], [], []
        for b, (job, n) in enumerate(chosen):
            tokens = job.tokens_in
            ids.append(tokens[job.fed:job.fed + n] + [0] * (width - n))
            positions.append(list(range(job.fed, job.fed + width)))
            w_slots += [job.slot] * n
            w_pos += range(job.fed, job.fed + n)
            w_rows += range(b * width, b * width + n)
            if job.row is not None:
                if job.fed + n == len(tokens):  # the prompt ends here: its last logits give the first token
                    keep.append(b * width + n - 1)
                    uses.append((job, 1, []))
                continue
            # scoring: the logits at position p predict token p + 1, from the continuation's first token on
            first = max(job.fed, len(job.score.prompt_ids) - 1)
            last = min(job.fed + n, len(tokens) - 1)
            keep += [b * width + p - job.fed for p in range(first, last)]
            uses.append((job, max(0, last - first), tokens[first + 1:last + 1]))
        fresh = all(job.fed == 0 for job, _ in chosen)
        slots = [job.slot for job, _ in chosen]
        adapters = [job.adapter_slot for job, _ in chosen]
        batch = Batch(
            ids=self._tensor(ids), positions=self._tensor(positions), slots=self._tensor(slots),
            kv_len=width if fresh else max(job.fed + n for job, n in chosen),
            write_slots=self._tensor(w_slots), write_positions=self._tensor(w_pos), write_rows=self._tensor(w_rows),
            fresh=fresh, lora=self._lora(adapters), modules=self._own_modules(adapters),
        )
        return batch, self._tensor(keep), uses

    # ----- decode ----------------------------------------------------------------------------

    def _decode_step(self) -> None:
        """One new token for every answering row; the batch is slots 0..n-1 (free slots ride along unused)."""
        jobs = sorted((j for j in self._running if j.prefilled and j.row is not None), key=lambda j: j.slot)
        rows = jobs[-1].slot + 1
        ids, positions = [0] * rows, [0] * rows
        w_slots, w_pos, adapters = [self.cache.scratch] * rows, [0] * rows, [0] * rows
        for job in jobs:
            ids[job.slot], positions[job.slot] = job.generated[-1], job.position
            w_slots[job.slot], w_pos[job.slot], adapters[job.slot] = job.slot, job.position, job.adapter_slot
        kv_len = max(positions) + 1
        logits = None
        modules = self._own_modules(adapters)
        if self.graphs is not None and modules is None:  # captured graphs know only the base's modules
            logits = self.graphs.decode(rows, kv_len, ids, positions, w_slots, w_pos, adapters)
        if logits is None:
            batch = Batch(
                ids=self._tensor(ids).view(rows, 1), positions=self._tensor(positions).view(rows, 1),
                slots=self._tensor(list(range(rows))), kv_len=kv_len, write_slots=self._tensor(w_slots),
                write_positions=self._tensor(w_pos), write_rows=self._tensor(list(range(rows))), prefix=True,
                lora=self._lora([job.adapter_slot for job in jobs], adapters), modules=modules,
                # Rows answering in step (a single stream, Compare columns of one prompt) need no mask; a
                # free slot riding along then reads its own stale keys, and its output is never used.
                unmasked=all(job.position == kv_len - 1 for job in jobs),
            )
            logits = self.forward(batch, self.cache, self._tensor(list(range(rows))))
        tokens = pick_tokens([job.sampler for job in jobs], logits[[job.slot for job in jobs]])
        self.steps += 1
        now = time.perf_counter()
        for job, token in zip(jobs, tokens):
            self._take(job, token, now)

    def _lora(self, used: list[int], per_row: list[int] | None = None) -> LoraBatch | None:
        """None when every row wants the base; else the rows' adapters (per_row includes unused rows)."""
        distinct = set(used)
        if distinct == {0}:
            return None
        return LoraBatch(self.stacks, self._tensor(per_row if per_row is not None else used), distinct)

    def _own_modules(self, per_row: list[int]) -> ModuleRows | None:
        """None unless some row's adapter brings its own lm_head/embed_tokens."""
        return ModuleRows.of(self.stacks.modules, per_row, self.device) if self.stacks.modules else None

    # ----- tokens out, jobs out ---------------------------------------------------------------

    def _take(self, job: Job, token: int, now: float) -> None:
        if token in self.eos_ids:
            self._end(job, "stop")
            return
        job.sampler.add(token)
        delta = job.text.add(token)
        job.first = job.first or now
        job.last = now
        if job.text.stopped:
            self._end(job, "stop", delta)
        elif len(job.generated) >= job.max_new:
            self._end(job, "length", delta)
        elif delta:
            job.call.emit(StreamEvent(job.row.index, job.row.variant, delta, job.text.text[:job.text.sent]))

    def _end(self, job: Job, reason: str, delta: str = "") -> None:
        """A job leaves: its slot is free at once; its caller hears the last event unless the call failed."""
        if job.finished:
            return
        job.finished = True
        if job in self._running:
            self._running.remove(job)
            self.cache.give_back(job.slot)
            self._users[job.adapter_slot] -= 1
            if job.adapter_slot in self._draining and self._users[job.adapter_slot] == 0:
                self._draining.discard(job.adapter_slot)
                self.stacks.remove(job.adapter_slot)
        if job.call.failed:
            return
        if job.row is not None:
            job.call.emit(job.done_event(reason, delta))
        job.call.job_done()

    def _fail(self, call: Call, error: ArenaError) -> None:
        call.fail(error)
        for job in [j for j in self._running if j.call is call]:
            self._end(job, "")
        for job in [j for j in self._waiting if j.call is call]:
            self._waiting.remove(job)
            job.finished = True

    def _tensor(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long).to(self.device, non_blocking=True)


def _stop(inbox: queue.Queue, thread: threading.Thread) -> None:
    inbox.put(None)
    if thread is not threading.current_thread():
        thread.join(timeout=10)


def _offsets(uses) -> list[int]:
    """Where each job's kept logits start in the chunk's logits."""
    starts, row = [], 0
    for _, count, _ in uses:
        starts.append(row)
        row += count
    return starts


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__

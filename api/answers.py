"""Chat and text completions: engine requests out, OpenAI replies (whole or as server-sent events) back.

The first event is awaited before any header is sent, so a request that never gets the device
(503), or that the engine refuses (too long, adapter gone), still gets a proper status and JSON
error. After that the answer streams; an error mid-stream becomes a last `error` event.
"""
from __future__ import annotations

import asyncio
import threading

from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, StreamingResponse

from models import ArenaError, ChatRequest

from . import protocol as p
from .bridge import EngineCall, Slot, cancel_on_disconnect, run_in_thread
from .protocol import ApiError, Ask


class Answers:
    """What the chat and completions routes share: the engine, and how long a request may wait for it."""

    def __init__(self, engine, wait_s: float):
        self.engine = engine
        self.wait_s = wait_s

    async def start(self, request, requests: list[ChatRequest]) -> tuple[EngineCall, object]:
        """Start the engine call and wait for its first event (the client hanging up cancels it)."""
        call = EngineCall(self.engine, requests)
        deadline = asyncio.get_running_loop().time() + self.wait_s
        try:
            async with cancel_on_disconnect(request, call.cancel):
                first = await call.next(timeout=self.wait_s)
                while first is not None and not (first.delta or first.done):  # still waiting for room
                    first = await call.next(timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
            if first is None:
                raise ApiError(500, "the engine ended without an answer")
        except asyncio.TimeoutError:
            call.close()
            raise ApiError(503, f"server busy: the model had no room for this request within {self.wait_s:g} s; "
                                "retry later", code="server_busy", retry_after=5) from None
        except BaseException as exc:
            call.close()
            raise engine_error(exc) from None
        return call, first

    async def rest(self, request, call: EngineCall, first) -> list:
        """Every event of a whole (not streamed) answer."""
        events = [first]
        async with cancel_on_disconnect(request, call.cancel):
            while (event := await call.next()) is not None:
                events.append(event)
        return events

    # ----- chat -------------------------------------------------------------------------------

    async def chat(self, request, ask: Ask, variant: str, slot: Slot):
        requests = [ChatRequest(variant, ask.messages, None, ask.params) for _ in range(ask.n)]
        call, first = await self.start(request, requests)
        reply_id = p.new_id("chatcmpl")
        if ask.stream:
            return sse_response(chat_stream(call, first, reply_id, ask), call, slot)
        try:
            finals = done_events(await self.rest(request, call, first), ask.n)
        finally:
            call.close()
            slot.release()
        return JSONResponse(p.chat_completion(reply_id, ask.model, [(e.text, e.stats.finish_reason) for e in finals],
                                              usage_of(finals, ask.n)))

    # ----- text completions --------------------------------------------------------------------

    async def completion(self, request, ask: Ask, variant: str, slot: Slot):
        prompts = [self.prompt_ids(prompt) for prompt in ask.prompts]
        if ask.params is None:  # max_tokens 0: score the prompts, generate nothing
            reply = await self.scored_prompts(request, ask, variant, prompts)
            slot.release()
            return JSONResponse(reply)
        requests = [ChatRequest(variant, None, params=ask.params, prompt_ids=ids) for ids in prompts
                    for _ in range(ask.n)]
        call, first = await self.start(request, requests)
        reply_id = p.new_id("cmpl")
        echoes = [self.prompt_text(prompt) if ask.echo else "" for prompt in ask.prompts for _ in range(ask.n)]
        if ask.stream:
            return sse_response(completion_stream(call, first, reply_id, ask, echoes), call, slot)
        try:
            finals = done_events(await self.rest(request, call, first), len(requests))
            choices = []
            for i, event in enumerate(finals):
                logprobs = None
                if ask.logprobs is not None:
                    logprobs = await self.logprobs(request, ask, variant, prompts[i // ask.n], event)
                choices.append(p.completion_choice(i, echoes[i] + event.text, event.stats.finish_reason, logprobs))
        finally:
            call.close()
            slot.release()
        return JSONResponse(p.text_completion(reply_id, ask.model, choices, usage_of(finals, ask.n)))

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.engine.tokenizer(prompt)["input_ids"]  # special tokens as the model expects, like vLLM
        vocab = len(self.engine.tokenizer)
        if max(prompt) >= vocab:
            raise ApiError(400, f"prompt has token id {max(prompt)}, this model's vocabulary has {vocab}", "prompt")
        return prompt

    def prompt_text(self, prompt: str | list[int]) -> str:
        return prompt if isinstance(prompt, str) else self.engine.tokenizer.decode(prompt)

    async def scored_prompts(self, request, ask: Ask, variant: str, prompts: list[list[int]]) -> dict:
        choices = []
        for i, ids in enumerate(prompts):
            scored = await self.score(request, variant, ids, ask.logprobs or 0)
            block = logprobs_block(self.engine.tokenizer, ids, [None] + scored) if ask.logprobs is not None else None
            for j in range(ask.n):
                choices.append(p.completion_choice(i * ask.n + j, self.prompt_text(ask.prompts[i]), "length", block))
        prompt_tokens = sum(len(ids) for ids in prompts)
        return p.text_completion(p.new_id("cmpl"), ask.model, choices, p.usage(prompt_tokens, 0))

    async def logprobs(self, request, ask: Ask, variant: str, prompt: list[int], event) -> dict:
        """Log-probabilities of the answer's tokens (and the prompt's, with echo) from one scoring pass."""
        answer = event.token_ids if getattr(event, "token_ids", None) is not None else \
            self.engine.tokenizer(event.text, add_special_tokens=False)["input_ids"]
        scored = [None] + await self.score(request, variant, prompt + answer, ask.logprobs)
        if ask.echo:
            return logprobs_block(self.engine.tokenizer, prompt + answer, scored)
        return logprobs_block(self.engine.tokenizer, answer, scored[len(prompt):], offset=len(self.prompt_text(prompt)))

    async def score(self, request, variant: str, ids: list[int], top: int) -> list:
        cancel = threading.Event()
        try:
            async with cancel_on_disconnect(request, cancel):
                return await run_in_thread(self.engine.token_logprobs, variant, ids, top, cancel=cancel)
        except BaseException as exc:
            raise engine_error(exc) from None


def logprobs_block(tokenizer, ids: list[int], scored: list, offset: int = 0) -> dict:
    """OpenAI's logprobs object: each token's text, log-probability (None for the very first), top alternatives,
    and where its text starts (`offset`: the length of the text in front of the first token)."""
    tokens = [tokenizer.decode([t]) for t in ids]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [s.logprob if s is not None else None for s in scored],
        "top_logprobs": [{tokenizer.decode([t]): lp for t, lp in s.top} if s is not None and s.top else None
                         for s in scored],
        "text_offset": offsets,
    }


def engine_error(exc: BaseException) -> ApiError:
    """The engine's one-line errors with the status a client expects."""
    if isinstance(exc, ApiError):
        return exc
    if not isinstance(exc, ArenaError):
        return ApiError(500, f"internal error: {type(exc).__name__}: {str(exc)[:200]}")
    message = str(exc)
    if "tokens" in message and ("context" in message or "answers up to" in message):
        return ApiError(400, message, "prompt" if "prompt" in message else "messages", code="context_length_exceeded")
    if "unloaded" in message or "unknown variant" in message or "cannot answer" in message:
        return ApiError(404, message, "model", code="model_not_found")
    if "out of memory" in message:
        return ApiError(503, message, code="server_busy", retry_after=5)
    return ApiError(400, message)


def done_events(events: list, count: int) -> list:
    finals = [None] * count
    for event in events:
        if event.done:
            finals[event.index] = event
    return finals


def usage_of(finals: list, n: int) -> dict:
    """Each prompt's tokens once (its n choices share it), and the tokens of every choice."""
    finals = sorted(finals, key=lambda e: e.index)
    return p.usage(sum(e.stats.prompt_tokens for e in finals[::n]), sum(e.stats.new_tokens for e in finals))


def sse_response(chunks, call: EngineCall, slot: Slot) -> StreamingResponse:
    def end() -> None:  # idempotent: runs when the stream ends, and again if it never started
        call.close()
        slot.release()

    async def body():
        try:
            async for chunk in chunks:
                yield chunk
        except asyncio.CancelledError:
            raise  # the client went away: end() cancels the generation
        except BaseException as exc:  # headers are sent: the error travels as the last event
            yield p.sse(engine_error(exc).body())
        finally:
            end()
    return StreamingResponse(body(), media_type="text/event-stream", background=BackgroundTask(end),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def events_of(call: EngineCall, first):
    event = first
    while event is not None:
        yield event
        event = await call.next()


async def chat_stream(call: EngineCall, first, reply_id: str, ask: Ask):
    started, finals = set(), []
    usage_field = ask.include_usage
    async for event in events_of(call, first):
        if event.index not in started:
            started.add(event.index)
            yield p.sse(p.chat_chunk(reply_id, ask.model, event.index, {"role": "assistant", "content": ""},
                                     with_usage=usage_field))
        if event.delta:
            yield p.sse(p.chat_chunk(reply_id, ask.model, event.index, {"content": event.delta}, with_usage=usage_field))
        if event.done:
            finals.append(event)
            yield p.sse(p.chat_chunk(reply_id, ask.model, event.index, {}, event.stats.finish_reason or "stop",
                                     with_usage=usage_field))
    if ask.include_usage:
        yield p.sse(p.usage_chunk(reply_id, ask.model, "chat.completion.chunk", usage_of(finals, ask.n)))
    yield p.DONE


async def completion_stream(call: EngineCall, first, reply_id: str, ask: Ask, echoes: list[str]):
    started, finals = set(), []
    async for event in events_of(call, first):
        text = event.delta
        if event.index not in started:
            started.add(event.index)
            text = echoes[event.index] + text
        if text or event.done:
            choice = p.completion_choice(event.index, text, event.stats.finish_reason if event.done else None)
            yield p.sse(p.text_completion(reply_id, ask.model, [choice], None))
        if event.done:
            finals.append(event)
    if ask.include_usage:
        yield p.sse(p.usage_chunk(reply_id, ask.model, "text_completion", usage_of(finals, ask.n)))
    yield p.DONE

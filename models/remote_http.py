"""One remote OpenAI-compatible server (vLLM, another LoRA Arena) spoken to over HTTP.

What the remote backend needs and nothing more: the models it serves (vLLM's `parent` tells an
adapter from the base), a completion streamed from prompt token ids, each prompt token's
log-probability (`echo` + `logprobs`, as lm-eval's local-completions asks), and vLLM's runtime
adapter routes. Everything is async (httpx), so a cancelled request closes its connection at
once and the server frees its place.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import AsyncIterator

import httpx

from kernel.config import SamplingParams
from kernel.errors import ArenaError, NotSupported, first_line

# Statuses with which a server says it has no such feature (rather than that the request was wrong).
UNSUPPORTED = {400, 404, 405, 422, 501}


@dataclass
class RemoteModel:
    id: str
    root: str
    parent: str | None  # the base's id for an adapter (vLLM and LoRA Arena), None for a base
    context: int | None  # max_model_len when the server says


@dataclass
class Piece:
    """A piece of a streamed completion; the last one has finish_reason and, when sent, usage."""

    text: str
    finish_reason: str | None = None
    completion_tokens: int | None = None


class RemoteServer:
    def __init__(self, url: str, key: str | None, client: httpx.AsyncClient):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = client
        self.busy = 0  # rows this process has running there: the least busy server gets the next one
        self.models: list[RemoteModel] = []

    async def list_models(self) -> list[RemoteModel]:
        data = await self._json("GET", "/models")
        try:
            self.models = [RemoteModel(str(m["id"]), str(m.get("root") or m["id"]), m.get("parent"),
                                       m.get("max_model_len")) for m in data["data"]]
        except (KeyError, TypeError):
            raise ArenaError(f"backend {self.url}: /models did not answer a list of models") from None
        return self.models

    async def stream(self, model: str, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Piece]:
        payload = {"model": model, "prompt": prompt_ids, "stream": True, "stream_options": {"include_usage": True},
                   **sampling_payload(params)}
        async with self.client.stream("POST", self.url + "/completions", json=payload, headers=self.headers) as reply:
            if reply.status_code >= 400:
                await reply.aread()
                raise self._error(reply)
            finish, tokens = None, None
            async for line in reply.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise ArenaError(f"backend {self.url}: {error_message(chunk)}")
                if chunk.get("usage"):
                    tokens = chunk["usage"].get("completion_tokens")
                for choice in chunk.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    if choice.get("text"):
                        yield Piece(choice["text"])
            yield Piece("", finish or "stop", tokens)

    async def token_logprobs(self, model: str, ids: list[int]) -> list[float | None]:
        """Each prompt token's log-probability after the ones before it (None for the first)."""
        payload = {"model": model, "prompt": ids, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0}
        reply = await self._post("/completions", payload)
        if reply.status_code in UNSUPPORTED:
            raise NotSupported(f"scoring by echo + logprobs is not supported by this backend ({self.url}: "
                               f"HTTP {reply.status_code} {error_message(reply)[:120]})")
        data = self._checked(reply)
        try:
            values = data["choices"][0]["logprobs"]["token_logprobs"]
        except (KeyError, IndexError, TypeError):
            raise NotSupported(f"scoring by echo + logprobs is not supported by this backend ({self.url} "
                               "answered without logprobs)") from None
        if not isinstance(values, list) or len(values) < len(ids):
            raise NotSupported(f"scoring by echo + logprobs is not supported by this backend ({self.url} "
                               "did not echo the prompt's log-probabilities)")
        return values[:len(ids)]

    async def load_adapter(self, name: str, path: str) -> str:
        """'' when the server loaded it, else why not (runtime loading off, path not visible to it, ...)."""
        reply = await self._post("/load_lora_adapter", {"lora_name": name, "lora_path": path})
        if reply.status_code in (404, 405):
            return (f"{self.url} does not load adapters at runtime (vLLM: start it with "
                    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)")
        if reply.status_code >= 400:
            return f"{self.url} refused it: {error_message(reply)[:300]}"
        return ""

    async def unload_adapter(self, name: str) -> None:
        await self._post("/unload_lora_adapter", {"lora_name": name})  # already gone is fine

    # ----- plumbing -------------------------------------------------------------------------------

    async def _post(self, path: str, payload: dict) -> httpx.Response:
        try:
            return await self.client.post(self.url + path, json=payload, headers=self.headers)
        except httpx.HTTPError as exc:
            raise ArenaError(f"backend {self.url}: {type(exc).__name__} ({first_line(exc)})") from None

    async def _json(self, method: str, path: str) -> dict:
        try:
            reply = await self.client.request(method, self.url + path, headers=self.headers)
        except httpx.HTTPError as exc:
            raise ArenaError(f"backend {self.url}: cannot reach it ({type(exc).__name__}: {first_line(exc)})") from None
        return self._checked(reply)

    def _checked(self, reply: httpx.Response) -> dict:
        if reply.status_code >= 400:
            raise self._error(reply)
        try:
            return reply.json()
        except ValueError:
            raise ArenaError(f"backend {self.url}: answered with something that is not JSON") from None

    def _error(self, reply: httpx.Response) -> ArenaError:
        hint = " (wrong or missing --backend-key?)" if reply.status_code in (401, 403) else ""
        return ArenaError(f"backend {self.url}: HTTP {reply.status_code} {error_message(reply)[:300]}{hint}")


def error_message(reply) -> str:
    """The message of an OpenAI-shaped error (a reply or a decoded chunk), else the body's first line."""
    try:
        data = reply if isinstance(reply, dict) else reply.json()
        error = data.get("error", data)
        return str(error.get("message") or error) if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        return first_line(reply.text) if reply.text else "(empty body)"


def sampling_payload(params: SamplingParams) -> dict:
    """OpenAI's sampling fields, plus vLLM's top_k / repetition_penalty only when they are not neutral."""
    payload = {"max_tokens": params.max_new_tokens, "temperature": params.temperature, "top_p": params.top_p}
    if params.seed is not None:
        payload["seed"] = params.seed
    if params.top_k:
        payload["top_k"] = params.top_k
    if params.repetition_penalty != 1.0:
        payload["repetition_penalty"] = params.repetition_penalty
    if getattr(params, "stop", ()):
        payload["stop"] = list(params.stop)
    return payload

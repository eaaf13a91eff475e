"""The OpenAI wire format: request bodies checked field by field, and replies built back.

Every field a request may carry is either honoured, accepted because it cannot change the answer
(`user`, `metadata`), or refused by name with a 400: a sampling option the engine cannot follow
is never dropped silently. Optional engine features (stop strings, frequency/presence penalties)
are honoured as soon as `SamplingParams` has the field.
"""
from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field

from kernel.config import SamplingParams
from kernel.errors import ArenaError

MAX_N = 8
MAX_PROMPTS = 32
NO_EFFECT = {"user", "metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier",
             "parallel_tool_calls", "stream_options"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 429: "rate_limit_error", 503: "server_error"}


class ApiError(Exception):
    """An error the client sees as OpenAI's JSON error object with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.retry_after = status, message, param, code, retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


@dataclass
class Ask:
    """One chat or completions request, checked: what to generate (or score), for which model, how."""

    model: str
    params: SamplingParams | None  # None: score only (completions with max_tokens 0)
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    messages: list[dict] | None = None  # chat
    prompts: list[str | list[int]] = field(default_factory=list)  # completions
    echo: bool = False
    logprobs: int | None = None  # completions: how many alternatives per token (0 = the chosen token only)


class Body:
    """A JSON object read field by field; whatever is left unread at the end is refused by name."""

    def __init__(self, raw: bytes):
        try:
            self.data = json.loads(raw or b"null")
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(self.data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        self.read: set[str] = set()

    def get(self, name: str, default=None):
        self.read.add(name)
        value = self.data.get(name)
        return default if value is None else value

    def number(self, name: str, low: float, high: float, default, above_low: bool = False):
        value = self.get(name, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                (value > low if above_low else value >= low) and value <= high):
            bound = "above" if above_low else "from"
            raise ApiError(400, f"{name} must be a number {bound} {low:g} to {high:g}, got {value!r}", name)
        return float(value)

    def integer(self, name: str, low: int, high: int, default):
        value = self.get(name, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ApiError(400, f"{name} must be a whole number from {low} to {high}, got {value!r}", name)
        return value

    def flag(self, name: str) -> bool:
        value = self.get(name, False)
        if not isinstance(value, bool):
            raise ApiError(400, f"{name} must be true or false, got {value!r}", name)
        return value

    def refuse(self, name: str, why: str, neutral=(None, False, 0, "", [], {})) -> None:
        """A field this server cannot honour: fine when absent or neutral, else a 400 naming it."""
        value = self.get(name)
        if value not in neutral:
            raise ApiError(400, f"{name} is not supported: {why}", name)

    def finish(self) -> None:
        unknown = sorted(k for k, v in self.data.items() if k not in self.read and k not in NO_EFFECT and v is not None)
        if unknown:
            raise ApiError(400, f"unsupported field {unknown[0]!r}", unknown[0])


def model_name(body: Body) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiError(400, "model is required: a name from GET /v1/models", "model")
    return model.strip()


@dataclass
class Limits:
    """The most one request may ask for (a public server's caps are lower)."""

    max_tokens: int = 32768
    n: int = MAX_N


def parse_chat(raw: bytes, context_limit: int, limits: Limits = Limits()) -> Ask:
    body = Body(raw)
    model = model_name(body)
    messages = chat_messages(body.get("messages"))
    limit = body.integer("max_completion_tokens", 1, limits.max_tokens, None)
    limit = body.integer("max_tokens", 1, limits.max_tokens, limit)
    params = sampling(body, limit or min(context_limit, limits.max_tokens))
    body.refuse("logprobs", "log-probabilities of generated tokens; score text with /v1/completions, echo and logprobs")
    body.refuse("top_logprobs", "see logprobs")
    body.refuse("tools", "tool calls", neutral=(None, []))
    body.refuse("tool_choice", "tool calls", neutral=(None, "none", "auto"))
    body.refuse("functions", "function calls", neutral=(None, []))
    body.refuse("function_call", "function calls", neutral=(None, "none", "auto"))
    body.refuse("response_format", "constrained output formats", neutral=(None, {"type": "text"}))
    body.refuse("modalities", "audio output", neutral=(None, ["text"]))
    ask = Ask(model, params, messages=messages, **streaming(body, limits.n))
    body.finish()
    return ask


def parse_completion(raw: bytes, limits: Limits = Limits()) -> Ask:
    body = Body(raw)
    model = model_name(body)
    prompts = completion_prompts(body.get("prompt"))
    echo = body.flag("echo")
    logprobs = body.integer("logprobs", 0, 20, None)
    max_tokens = body.integer("max_tokens", 0, limits.max_tokens, min(16, limits.max_tokens))  # OpenAI's default: 16
    if max_tokens == 0 and not echo:
        raise ApiError(400, "max_tokens 0 generates nothing: it needs echo true (to score the prompt)", "max_tokens")
    params = sampling(body, max(max_tokens, 1))
    body.refuse("suffix", "text after the insertion point")
    body.refuse("best_of", "server-side best-of ranking", neutral=(None, 1))
    body.refuse("logit_bias", "logit biases", neutral=(None, {}))
    ask = Ask(model, params if max_tokens else None, prompts=prompts, echo=echo, logprobs=logprobs,
              **streaming(body, limits.n))
    if ask.stream and logprobs is not None:
        raise ApiError(400, "logprobs with stream is not supported: ask without stream", "logprobs")
    body.finish()
    return ask


def streaming(body: Body, max_n: int) -> dict:
    n = body.integer("n", 1, max_n, 1)
    stream = body.flag("stream")
    options = body.get("stream_options", {})
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    if options and not stream:
        raise ApiError(400, "stream_options is only allowed with stream true", "stream_options")
    unknown = sorted(set(options) - {"include_usage"})
    if unknown:
        raise ApiError(400, f"unsupported field 'stream_options.{unknown[0]}'", "stream_options")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise ApiError(400, "stream_options.include_usage must be true or false", "stream_options")
    return {"n": n, "stream": stream, "include_usage": include_usage}


def sampling(body: Body, max_new_tokens: int) -> SamplingParams:
    """The engine's sampling settings; an option it has no field for is refused unless neutral."""
    values = dict(
        max_new_tokens=max_new_tokens,
        temperature=body.number("temperature", 0, 2, 1.0),  # OpenAI samples at 1 unless told otherwise
        top_p=body.number("top_p", 0, 1, 1.0, above_low=True),
        top_k=max(0, body.integer("top_k", -1, 1_000_000, 0)),  # vLLM's extension; -1 and 0 mean off
        repetition_penalty=body.number("repetition_penalty", 0.5, 2, 1.0),  # vLLM's extension
        seed=body.integer("seed", -(2**63), 2**63 - 1, None),
    )
    optional = {
        "stop": (stop_strings(body.get("stop")), ()),
        "frequency_penalty": (body.number("frequency_penalty", -2, 2, 0.0), 0.0),
        "presence_penalty": (body.number("presence_penalty", -2, 2, 0.0), 0.0),
    }
    known = {f.name for f in dataclasses.fields(SamplingParams)}
    for name, (value, neutral) in optional.items():
        if value != neutral:
            if name not in known:
                raise ApiError(400, f"{name} is not supported by this server's engine yet", name)
            values[name] = value
    try:
        return SamplingParams(**values)
    except ArenaError as exc:
        raise ApiError(400, str(exc)) from None


def stop_strings(value) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
        raise ApiError(400, "stop must be a non-empty string or a list of up to 4 of them", "stop")
    return tuple(stops)


def chat_messages(value) -> list[dict]:
    """OpenAI messages as {role, content} with text content; 'developer' is the newer name of 'system'."""
    if not isinstance(value, list) or not value:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", "messages")
    clean = []
    for n, message in enumerate(value):
        where = f"messages[{n}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object with role and content", "messages")
        if message.get("tool_calls"):
            raise ApiError(400, f"{where}.tool_calls is not supported: tool calls", "messages")
        role = "system" if message.get("role") == "developer" else message.get("role")
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"{where}.role must be system, user or assistant, got {message.get('role')!r}",
                           "messages")
        clean.append({"role": role, "content": message_text(message.get("content"), where)})
    if clean[-1]["role"] != "user" or not clean[-1]["content"].strip():
        raise ApiError(400, "the last message must be a non-empty user message", "messages")
    return clean


def message_text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ApiError(400, f"{where}.content: only text parts are supported, got {kind!r}", "messages")
        return "".join(part["text"] for part in content)
    raise ApiError(400, f"{where}.content must be text or a list of text parts", "messages")


def completion_prompts(value) -> list[str | list[int]]:
    """A prompt is text or token ids; a list of either asks for several completions at once."""
    def is_ids(item) -> bool:
        return isinstance(item, list) and bool(item) and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                                             for t in item)
    if isinstance(value, str) or is_ids(value):
        prompts = [value]
    elif isinstance(value, list) and value and all(isinstance(p, str) or is_ids(p) for p in value):
        prompts = list(value)
    else:
        raise ApiError(400, "prompt must be text, a list of token ids, or a list of either", "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise ApiError(400, f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}", "prompt")
    if any(p == "" for p in prompts):
        raise ApiError(400, "prompt is empty", "prompt")
    return prompts


# ----- replies ---------------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def chat_completion(reply_id: str, model: str, choices: list[tuple[str, str]], use: dict) -> dict:
    """choices: (text, finish reason) per choice, in order."""
    return {"id": reply_id, "object": "chat.completion", "created": now(), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": finish_reason(reason)} for i, (text, reason) in enumerate(choices)],
            "usage": use}


def chat_chunk(reply_id: str, model: str, index: int, delta: dict, reason: str | None = None,
               with_usage: bool = False) -> dict:
    chunk = {"id": reply_id, "object": "chat.completion.chunk", "created": now(), "model": model,
             "choices": [{"index": index, "delta": delta, "logprobs": None,
                          "finish_reason": finish_reason(reason) if reason else None}]}
    if with_usage:
        chunk["usage"] = None  # only the last chunk carries usage
    return chunk


def text_completion(reply_id: str, model: str, choices: list[dict], use: dict | None) -> dict:
    reply = {"id": reply_id, "object": "text_completion", "created": now(), "model": model, "choices": choices}
    if use is not None:
        reply["usage"] = use
    return reply


def completion_choice(index: int, text: str, reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs,
            "finish_reason": finish_reason(reason) if reason else None}


def usage_chunk(reply_id: str, model: str, obj: str, use: dict) -> dict:
    return {"id": reply_id, "object": obj, "created": now(), "model": model, "choices": [], "usage": use}


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"


def model_entry(model_id: str, root: str, parent: str | None, context: int, created: int) -> dict:
    """One entry of GET /v1/models, as vLLM writes it: an adapter names its base in `parent`."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": "lora-arena", "root": root,
            "parent": parent, "max_model_len": context}

"""The `/v1` ASGI app: models, chat and text completions, and vLLM's runtime adapter loading.

Mounted on the Gradio server (same process, port and engine as the page) or served alone. Every
route checks the API key itself (a pure ASGI check in front of all of them, so no path escapes it);
`public` servers answer but never change which adapters are loaded.
"""
from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from models import BASE, ArenaError, validate_name

from . import protocol as p
from .answers import Answers
from .bridge import Gate
from .protocol import ApiError

log = logging.getLogger(__name__)


@dataclass
class ApiSettings:
    key: str | None = None  # every request needs `Authorization: Bearer KEY` when set
    public: bool = False  # generation only: no adapter loading or unloading
    max_pending: int = 32  # API calls running or waiting before a new one gets 429
    wait_s: float = 120.0  # how long a call may wait for the model before it gets 503
    limits: p.Limits = field(default_factory=p.Limits)  # the most one request may ask for


class Api:
    def __init__(self, engine, settings: ApiSettings):
        self.engine = engine
        self.settings = settings
        self.gate = Gate(settings.max_pending)
        self.answers = Answers(engine, settings.wait_s)
        info = engine.info()
        self.base_name, self.base_path = info["name"], str(info["path"])
        self.created = int(time.time())

    # ----- models -------------------------------------------------------------------------------

    def model_ids(self) -> list[str]:
        return [self.base_name] + [name for name in self.engine.variants() if name != BASE]

    def entries(self) -> list[dict]:
        context = self.engine.context_limit
        base = p.model_entry(self.base_name, self.base_path, None, context, self.created)
        adapters = [p.model_entry(a.name, str(a.path), self.base_name, context, self.created)
                    for a in self.engine.adapters() if a.status == "loaded"]
        return [base] + adapters

    async def list_models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": self.entries()})

    async def get_model(self, request: Request) -> JSONResponse:
        name = request.path_params["model"]
        variant = self.variant_for(name)
        wanted = self.base_name if variant == BASE else variant
        return JSONResponse(next(e for e in self.entries() if e["id"] == wanted))

    def variant_for(self, model: str) -> str:
        """'base' or the base's own id mean the base; anything else must be a loaded adapter."""
        if model in (BASE, self.base_name):
            return BASE
        if model in self.engine.variants():
            return model
        known = {a.name: a for a in self.engine.adapters()}.get(model)
        why = f" (adapter '{model}' is {known.status}{': ' + known.reason if known.reason else ''})" if known else ""
        raise ApiError(404, f"the model '{model}' does not exist here{why}; choose from "
                            f"{', '.join(self.model_ids())} (or 'base')", "model", "model_not_found")

    # ----- generation ---------------------------------------------------------------------------

    async def chat(self, request: Request):
        ask = p.parse_chat(await request.body(), self.engine.context_limit, self.settings.limits)
        return await self.generate(request, ask, self.answers.chat)

    async def completions(self, request: Request):
        ask = p.parse_completion(await request.body(), self.settings.limits)
        return await self.generate(request, ask, self.answers.completion)

    async def generate(self, request: Request, ask: p.Ask, answer):
        variant = self.variant_for(ask.model)
        slot = self.gate.enter()
        try:
            return await answer(request, ask, variant, slot)
        except BaseException:
            slot.release()
            raise

    # ----- adapters (vLLM's runtime LoRA routes) --------------------------------------------------

    async def load_adapter(self, request: Request) -> JSONResponse:
        body = self.management_body(await request.body())
        name = self.adapter_name(body)
        path = body.get("lora_path")
        if path is not None:
            self.check_adapter_path(name, path)
        body.finish()
        self.engine.rescan(load=False)  # a folder new since the last scan becomes known
        known = {a.name: a for a in self.engine.adapters()}
        if name not in known:
            raise ApiError(404, f"no adapter folder '{name}' in {self.adapter_dirs_text()}", "lora_name",
                           "model_not_found")
        reload = known[name].status == "loaded"  # a retrained adapter under the same name: new weights
        info = self.engine.reload_adapter(name) if reload else self.engine.load_adapter(name)
        if info.status != "loaded":
            raise ApiError(400, f"adapter '{name}' cannot be loaded: {info.reason}", "lora_path")
        log.info("API %s adapter %s", "reloaded" if reload else "loaded", name)
        return JSONResponse({"status": "ok", "message": f"adapter '{name}' {'reloaded' if reload else 'loaded'}"})

    async def unload_adapter(self, request: Request) -> JSONResponse:
        body = self.management_body(await request.body())
        name = self.adapter_name(body)
        body.get("lora_int_id")  # vLLM's optional numeric id: names are enough here
        body.finish()
        if name not in self.engine.variants():
            raise ApiError(404, f"adapter '{name}' is not loaded; loaded: "
                                f"{', '.join(self.model_ids()[1:]) or 'none'}", "lora_name", "model_not_found")
        self.engine.unload_adapter(name)
        return JSONResponse({"status": "ok", "message": f"adapter '{name}' unloaded"})

    def management_body(self, raw: bytes) -> p.Body:
        if self.settings.public:
            raise ApiError(403, "adapter management is turned off on this public server", code="public_server")
        return p.Body(raw)

    @staticmethod
    def adapter_name(body: p.Body) -> str:
        name = body.get("lora_name")
        try:
            return validate_name(name)
        except ArenaError as exc:
            raise ApiError(400, f"lora_name: {exc}", "lora_name") from None

    def check_adapter_path(self, name: str, path) -> None:
        """Only a folder directly inside one of the engine's adapter folders, named like the adapter."""
        if not isinstance(path, str) or not path:
            raise ApiError(400, "lora_path must be a folder path", "lora_path")
        folder = Path(path).expanduser().resolve()
        roots = [Path(d).resolve() for d in self.engine.adapter_dirs]
        if folder.parent not in roots:
            raise ApiError(400, f"lora_path {path} is not inside this server's adapter folders "
                                f"({self.adapter_dirs_text()}): put it there (a shared folder) first", "lora_path")
        if folder.name != name:
            raise ApiError(400, f"lora_name '{name}' must be the folder's name '{folder.name}' here", "lora_name")

    def adapter_dirs_text(self) -> str:
        return ", ".join(str(d) for d in self.engine.adapter_dirs)


class KeyCheck:
    """Pure ASGI: no request reaches a route without the key (compared in constant time)."""

    def __init__(self, app, key: str | None):
        self.app = app
        self.expected = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.expected is not None:
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                error = ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                                 code="invalid_api_key")
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def error_response(error: ApiError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc)


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    what = "no such route" if exc.status_code == 404 else exc.detail
    return error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {what}"))


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("API request failed")
    return error_response(ApiError(500, f"internal error: {type(exc).__name__}"))


def build_api(engine, settings: ApiSettings | None = None):
    """The ASGI app to mount at /v1."""
    api = Api(engine, settings or ApiSettings())
    routes = [
        Route("/models", api.list_models, methods=["GET"]),
        Route("/models/{model:path}", api.get_model, methods=["GET"]),
        Route("/chat/completions", api.chat, methods=["POST"]),
        Route("/completions", api.completions, methods=["POST"]),
        Route("/load_lora_adapter", api.load_adapter, methods=["POST"]),
        Route("/unload_lora_adapter", api.unload_adapter, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={ApiError: api_error, HTTPException: http_error,
                                                       Exception: server_error})
    app.state.api = api
    return KeyCheck(app, api.settings.key)

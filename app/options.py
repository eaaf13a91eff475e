"""The web app's command line (`python arena.py`, `python -m app`) and its settings.

Flags and the environment are read and checked here, before torch and gradio load (about 14 s on a
small CPU), so a wrong flag or variable is answered at once (app.start reads them, then app.server loads
the engine and serves).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from evaluation.endpoints import JudgeEndpoint, parse_judge_endpoints
from kernel.cli import Parser, add_engine_args
from kernel.errors import ArenaError


@dataclass
class AppSettings:
    """What the app serves and allows: built from the flags and the environment (Spaces sets variables),
    or directly by tests and the bench."""

    host: str = "127.0.0.1"
    port: int = 7860
    public: bool = False  # a public Space: no uploads, deletions or training
    auth: tuple[str, str] | None = None
    max_message_chars: int = 4000
    max_upload_mb: int = 200
    search_provider: str = "duckduckgo"  # duckduckgo, searxng or off
    searxng_url: str | None = None
    search_timeout_s: float = 10.0
    judge_endpoints: dict[str, JudgeEndpoint] = field(default_factory=dict)  # --judge-endpoint NAME=URL
    # Public mode: what one session may ask for at once (one-line refusals beyond these).
    public_max_new_tokens: int = 512
    public_max_columns: int = 3
    public_max_requests: int = 2  # running at once, per session
    votes_per_minute: int = 6  # per session, in every mode
    login_free_failures: int = 5  # wrong logins from one client before it is locked out
    login_lockout_s: float = 60.0  # the first lockout; it doubles with each further failure
    api_key: str | None = None  # the /v1 API needs `Authorization: Bearer KEY` when set
    api_max_pending: int = 32  # API requests running or waiting; one more is answered 429
    api_wait_s: float = 120.0  # an API request that waits longer for the model is answered 503
    ui: bool = True  # False: serve the /v1 API alone, no web page (--no-ui)

    @staticmethod
    def parse_auth(value: str | None) -> tuple[str, str] | None:
        if not value:
            return None
        user, sep, password = value.partition(":")
        if not sep or not user or not password:
            raise ArenaError("--auth / ARENA_AUTH must look like USER:PASSWORD")
        return user, password

    @classmethod
    def from_env(cls, **overrides) -> "AppSettings":
        """Environment first (Spaces sets variables, not flags), then explicit overrides."""
        env = os.environ
        on_spaces = bool(env.get("SPACE_ID"))
        values = dict(
            host=env.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if on_spaces else "127.0.0.1"),
            port=int(env.get("GRADIO_SERVER_PORT") or 7860),
            public=env.get("ARENA_PUBLIC", "").lower() in ("1", "true", "yes"),
            auth=cls.parse_auth(env.get("ARENA_AUTH")),
            search_provider=env.get("ARENA_SEARCH", "duckduckgo"),
            searxng_url=env.get("ARENA_SEARXNG_URL") or None,
            judge_endpoints=parse_judge_endpoints(env.get("ARENA_JUDGE_ENDPOINTS", "").split()),
            api_key=env.get("ARENA_API_KEY") or None,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(prog="arena.py", description="LoRA Arena web app")
    parser.add_argument("--host", default=None, help="default 127.0.0.1 (0.0.0.0 on Spaces)")
    parser.add_argument("--port", type=int, default=None, help="default 7860")
    parser.add_argument("--auth", default=None,
                        help="USER:PASSWORD to require a login; prefer $ARENA_AUTH, since a flag shows in `ps`")
    parser.add_argument("--public", action="store_true", default=None,
                        help="public demo mode: no uploads, deletions, training or evaluation; the API only "
                             "answers (or $ARENA_PUBLIC=1)")
    parser.add_argument("--judge-endpoint", action="append", default=None, metavar="NAME=URL",
                        help="an OpenAI-compatible judge or teacher the app offers by NAME (repeatable, or "
                             "$ARENA_JUDGE_ENDPOINTS, space-separated): URL as http://host/v1?model=M, with "
                             "&key_env=VAR to send the key in $VAR (no key is sent otherwise)")
    parser.add_argument("--api-key", default=None,
                        help="every /v1 API request needs 'Authorization: Bearer KEY'; prefer $ARENA_API_KEY, "
                             "since a flag shows in `ps`")
    parser.add_argument("--api-max-pending", type=int, default=None,
                        help="API requests running or waiting at once; one more gets 429 (default 32)")
    parser.add_argument("--api-wait", type=float, default=None, dest="api_wait_s",
                        help="seconds an API request may wait for the model before it gets 503 (default 120)")
    parser.add_argument("--no-ui", dest="ui", action="store_false", default=None,
                        help="serve only the OpenAI-compatible API at /v1, no web page")
    add_engine_args(parser)
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> AppSettings:
    endpoints = parse_judge_endpoints(args.judge_endpoint) if args.judge_endpoint else None
    return AppSettings.from_env(host=args.host, port=args.port, public=args.public,
                                auth=AppSettings.parse_auth(args.auth), judge_endpoints=endpoints,
                                api_key=args.api_key, ui=args.ui, api_max_pending=args.api_max_pending,
                                api_wait_s=args.api_wait_s)

"""Build and launch the Gradio app: load the engine once, hand one context to every tab."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

import gradio as gr
from starlette.middleware import Middleware

from evaluation.store import AnswerStore
from evaluation.tasks import EvalTasks
from arena.ballots import VoteRule
from arena.ratings import RatingStore
from arena.votes import VoteStore
from kernel.errors import ArenaError
from models import Engine
from kernel.cli import engine_config_from_args
from chat.search import WebSearch, provider_from_settings
from training.jobs import JobRunner
from api import ApiSettings, Limits, build_api

from .access import Access, Need, guard_handlers, needs
from .arena_tab import ArenaTab
from .compare_tab import CompareTab
from .evaluate_tab import EvaluateTab
from .leaderboard_tab import LeaderboardTab
from .login import ClientAddress, LoginGuard
from .models_tab import ModelsTab
from .options import AppSettings
from .settings import AppContext, SessionRequests
from .training_tab import TrainingTab
from .widgets import TAB_KEY, remember_tab_js, session_of
from .zerogpu import on_zerogpu

log = logging.getLogger(__name__)
CSS = """
#compare-votes button, #arena-votes button { min-width: 0; }
footer { display: none !important; }
"""


def make_context(engine: Engine, settings: AppSettings) -> AppContext:
    """Every store is opened here, at start: a corrupt or newer file is refused now, in one line."""
    votes = VoteStore(engine.config.paths.votes_db)
    ratings = RatingStore(engine.config.paths.ratings_db)
    AnswerStore(engine.config.paths.eval_db)  # evaluation runs open it again when they start
    provider = provider_from_settings(settings.search_provider, settings.searxng_url)
    search = WebSearch(provider, timeout_s=settings.search_timeout_s) if provider is not None else None
    jobs = None if settings.public else JobRunner(engine.config.data_dir, on_finished=_serve_new_adapter(engine))
    if jobs is not None:
        jobs.start()  # re-attaches to jobs still running from before a restart
    return AppContext(engine=engine, settings=settings, votes=votes, search=search, jobs=jobs,
                      evals=EvalTasks(engine, engine.config.data_dir), ratings=ratings,
                      ballots=VoteRule(votes, per_minute=settings.votes_per_minute, ratings=ratings),
                      requests=SessionRequests(settings.public_max_requests if settings.public else None),
                      access=Access(public=settings.public))


def _serve_new_adapter(engine: Engine):
    """When a job succeeds, its adapter answers in Compare and Arena at once, no restart. Called on the job
    runner's hook thread, not its scheduler: loading the adapter waits for the device."""
    def on_finished(job) -> None:
        if job.status != "succeeded":
            return
        if job.name in {a.name for a in engine.adapters()}:
            engine.reload_adapter(job.name)  # retrained under the same name: serve the new weights
        else:
            engine.rescan()
    return on_finished


def build_app(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title="LoRA Arena") as demo:
        gr.Markdown("# LoRA Arena\nDid the fine-tune make it better? Ask the base model and each adapter the same thing.")
        with gr.Tabs(elem_id="main-tabs") as tabs:
            compare = CompareTab(ctx)
            pages = [compare.build(), ArenaTab(ctx).build(), LeaderboardTab(ctx).build(),
                     TrainingTab(ctx, tabs, compare).build(), EvaluateTab(ctx).build(), ModelsTab(ctx).build()]
        remember_tab(demo, tabs, pages)
        demo.unload(_closer(ctx))
    guard_handlers(demo, ctx.access)  # after every event is registered: each one is checked, private too
    return demo


def remember_tab(demo: gr.Blocks, tabs: gr.Tabs, pages: list[gr.Tab]) -> None:
    """A reload lands on the tab the person was on (kept in the browser's localStorage; no server call)."""
    for page in pages:
        page.select(None, None, None, js=remember_tab_js(page.id))
    known = [page.id for page in pages]
    demo.load(None, None, tabs, js=f"() => {{ const tab = localStorage.getItem({TAB_KEY!r}); "
                                   f"return {{__type__: 'update', selected: {known!r}.includes(tab) ? tab : {known[0]!r}}}; }}")


def _closer(ctx: AppContext):
    """A closed or reloaded tab cancels whatever that session still has running or waiting."""
    @needs(Need.SESSION)
    def close_session(request: gr.Request) -> None:
        session = session_of(request)
        ctx.requests.cancel(session)
        ctx.ballots.forget(session)
    return close_session


def launch(ctx: AppContext, **kwargs) -> tuple[gr.Blocks, str]:
    """Start the server; returns the app and its URL (kwargs go to Blocks.launch, e.g. prevent_thread_lock).

    The OpenAI-compatible API is mounted at /v1 of the same server: its routes go first in the
    FastAPI app Gradio creates, so they share the port, the process and the engine with the page.
    """
    demo = build_app(ctx)
    demo.queue(default_concurrency_limit=8)
    settings = ctx.settings
    auth = None
    if settings.auth is not None:
        auth = LoginGuard(*settings.auth, free_failures=settings.login_free_failures,
                          lockout_s=settings.login_lockout_s).check
    # Gradio checks that the page answers with one 3 s request and, if not, stops the launch ("localhost is not
    # accessible"): a busy 2-core machine or a cold Space can take longer. We skip that check (_frontend=False
    # does nothing else in gradio 6.31, pinned) and wait for the page ourselves, patiently.
    block = not kwargs.pop("prevent_thread_lock", False)  # the command line serves until interrupted
    _, url, _ = demo.launch(server_name=settings.host, server_port=settings.port, auth=auth,
                            css=CSS, theme=gr.themes.Soft(), max_file_size=f"{settings.max_upload_mb}mb",
                            footer_links=["api"], app_kwargs={"middleware": [Middleware(ClientAddress)],
                                                         "routes": api_routes(ctx.engine, settings)},
                            _frontend=False, prevent_thread_lock=True, **kwargs)
    wait_until_served(url)
    if block:
        demo.block_thread()
    return demo, url


def wait_until_served(url: str, timeout_s: float = 60.0) -> None:
    """Return once the page answers at `url`; one line naming the URL if it never does."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.head(url, timeout=10, follow_redirects=False).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ArenaError(f"the page does not answer at {url} after {timeout_s:.0f} s: is localhost reachable "
                             f"from here (a proxy setting)?")
        time.sleep(0.5)


def api_routes(engine: Engine, settings: AppSettings) -> list:
    from starlette.routing import Mount

    # A public server's API asks no more of the model than its page lets one session ask.
    limits = Limits(settings.public_max_new_tokens, settings.public_max_columns) if settings.public else Limits()
    api = ApiSettings(key=settings.api_key, public=settings.public, max_pending=settings.api_max_pending,
                      wait_s=settings.api_wait_s, limits=limits)
    return [Mount("/v1", app=build_api(engine, api))]


def serve_api_only(engine: Engine, settings: AppSettings) -> None:
    """--no-ui: the /v1 API alone, for a machine that only serves (another arena's --backend-url)."""
    import uvicorn
    from starlette.applications import Starlette

    uvicorn.run(Starlette(routes=api_routes(engine, settings)), host=settings.host, port=settings.port,
                log_level="warning")


def warn_if_open(settings: AppSettings) -> None:
    """An API without a key on an address others can reach lets anyone use the model: say so at start."""
    if settings.api_key or is_loopback(settings.host):
        return
    message = (f"warning: the /v1 API on {settings.host}:{settings.port} has no key, so anyone who can reach it "
               "can use the model; set --api-key or ARENA_API_KEY")
    print(message, file=sys.stderr, flush=True)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace, settings: AppSettings) -> None:
    """Load the engine the command line asked for and serve it (app.options read and checked the rest)."""
    if args.backend is None and on_zerogpu():
        args.backend = "hf"
        log.info("ZeroGPU: serving with the reference backend (a GPU is lent per call)")
    engine = Engine.load(engine_config_from_args(args))
    # A store the page cannot open stops it here, before "serving" is logged.
    ctx = make_context(engine, settings) if settings.ui else None
    log.info("serving %s with %d adapters (%s backend) on http://%s:%d (API at /v1)", engine.base_name,
             len(engine.variants()) - 1, engine.backend.name, settings.host, settings.port)
    warn_if_open(settings)
    if ctx is None:
        serve_api_only(engine, settings)
        return
    launch(ctx)

"""Widgets and handler helpers shared by several tabs: sampling controls, the message box, error display."""
from __future__ import annotations

import functools
import inspect
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from kernel.config import SamplingParams
from kernel.errors import ArenaError, write_error

from .access import Need, needs

log = logging.getLogger(__name__)


def user_errors(fn):
    """Show ArenaError as a one-line message; log anything else and show one line, never a traceback."""

    def to_gradio(exc: Exception) -> gr.Error:
        if isinstance(exc, ArenaError):
            return gr.Error(str(exc), print_exception=False)
        log.exception("handler %s failed", fn.__name__)
        lines = str(exc).strip().splitlines()
        return gr.Error(f"Something went wrong: {lines[0] if lines else type(exc).__name__}", print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise to_gradio(exc) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise to_gradio(exc) from None
    return wrapper


@dataclass
class SamplingWidgets:
    max_new_tokens: gr.Slider
    temperature: gr.Slider
    top_p: gr.Slider
    top_k: gr.Slider
    repetition_penalty: gr.Slider
    seed: gr.Number

    @staticmethod
    def new_tokens(default: int, token_cap: int | None = None, elem_id: str | None = None) -> gr.Slider:
        """Max new tokens, the setting that decides how long an answer takes: built beside Send, not hidden
        in the panel. `token_cap`: a public server's limit (the handlers refuse more; the slider stops there)."""
        most = token_cap or 2048
        return gr.Slider(1, most, value=min(default, most), step=1, label="Max new tokens", scale=2,
                         elem_id=elem_id, info="fewer tokens answer sooner")

    @classmethod
    def build(cls, max_new_tokens: gr.Slider, label: str = "Sampling (shared by every column)") -> "SamplingWidgets":
        with gr.Accordion(label, open=False):
            with gr.Row():
                widgets = cls(
                    max_new_tokens=max_new_tokens,
                    temperature=gr.Slider(0, 2, value=0.0, step=0.05, label="Temperature (0 = greedy)"),
                    top_p=gr.Slider(0.05, 1, value=1.0, step=0.05, label="Top p"),
                    top_k=gr.Slider(0, 200, value=0, step=1, label="Top k (0 = off)"),
                    repetition_penalty=gr.Slider(0.8, 1.5, value=1.0, step=0.01, label="Repetition penalty"),
                    seed=gr.Number(value=None, precision=0, label="Seed (empty = random)"),
                )
        return widgets

    @property
    def components(self) -> list:
        return [self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.repetition_penalty, self.seed]

    def params(self, data: dict) -> SamplingParams:
        seed = data[self.seed]
        return SamplingParams(
            max_new_tokens=int(data[self.max_new_tokens]), temperature=float(data[self.temperature]),
            top_p=float(data[self.top_p]), top_k=int(data[self.top_k]),
            repetition_penalty=float(data[self.repetition_penalty]),
            seed=int(seed) if seed not in (None, "") else None,
        )


class MessageBox:
    """A chat tab's message box: no silent cut at the limit (the browser would drop the rest of a long
    paste), and a character counter in the note under it, kept in the browser (no server call). The
    handler refuses an empty or too-long message with one line: a toast, and an error mark on the note;
    the events show their progress and errors on the note only, so the chats are never covered."""

    def __init__(self, box: gr.Textbox, note: gr.Markdown, max_chars: int):
        self.box, self.note, self.max_chars = box, note, max_chars
        box.change(None, box, note, js=self.counter_js())  # typed, pasted or cleared after Send alike

    def counter_js(self) -> str:
        limit = self.max_chars
        return ("(text) => { const n = (text || '').length; "
                f"if (n > {limit}) return `**${{n}} / {limit} characters**: too long to send; shorten it by "
                f"${{n - {limit}}} (nothing was cut)`; "
                f"return n ? `${{n}} / {limit} characters` : ''; }}")


def rating_radio(label: str, **kwargs) -> gr.Radio:
    """1-5 under an answer: usable once the answer is complete (Compare) or revealed (Arena)."""
    return gr.Radio([1, 2, 3, 4, 5], value=None, label=label, interactive=False, **kwargs)


def rating_handler(ballots, mode: str, column: int):
    """Rate the answer in `column` of the session's open ballot (arena.ballots.VoteRule.rate)."""
    @needs(Need.VOTE)
    @user_errors
    def rate(score, request: gr.Request):
        rating = ballots.rate(session_of(request), mode, column, score)
        return gr.Radio(value=rating.score, info=f"saved: {rating.score} of 5 (click another to change it)")
    return rate


class Throttle:
    """Let a streaming handler yield at most every `interval` seconds (and always at the end)."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.last = 0.0

    def ready(self) -> bool:
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            return True
        return False


def keep_upload(file, folder: Path) -> Path:
    """Copy a browser upload into a data folder: a temp name, then a rename, so no half file is ever listed."""
    source = Path(file if isinstance(file, str) else file.name)
    target = folder / source.name
    tmp = target.with_name(f".{target.name}.{time.time_ns()}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, tmp)
        tmp.replace(target)
    except OSError as exc:  # a full disk: no half copy may stay behind to be listed or fill it further
        tmp.unlink(missing_ok=True)
        raise write_error(exc, target) from None
    return target


TAB_KEY = "lora-arena-tab"  # localStorage key: the tab a reload lands on


def remember_tab_js(tab_id: str) -> str:
    """Browser-side: note the tab being shown, so a reload comes back to it."""
    return f"() => {{ localStorage.setItem({TAB_KEY!r}, {tab_id!r}); }}"


def session_of(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "anonymous"

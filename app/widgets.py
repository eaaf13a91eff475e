"""Widgets and handler helpers shared by several tabs: sampling controls, error display, columns."""
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

    @classmethod
    def build(cls, label: str = "Sampling (shared by every column)", max_new_tokens: int = 256,
              token_cap: int | None = None) -> "SamplingWidgets":
        """`token_cap`: a public server's limit on new tokens (the handlers refuse more; the slider stops there)."""
        most = token_cap or 2048
        with gr.Accordion(label, open=False):
            with gr.Row():
                widgets = cls(
                    max_new_tokens=gr.Slider(1, most, value=min(max_new_tokens, most), step=1, label="Max new tokens"),
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


def session_of(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "anonymous"

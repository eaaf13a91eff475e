"""What every command line shares (inference.py, the app, `python -m training`, `python -m evaluation`):
engine and sampling options, library verbosity, and how an error becomes one line and an exit code.

Exit codes: 0 done; 1 done only in part (e.g. a teacher that stopped answering); 2 an error the user can
fix, printed as one line `error: ...` on stderr; 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

from .config import EngineConfig, SamplingParams
from .data_dir import resolve_data_dir
from .errors import ArenaError, first_line

EXIT_PARTIAL = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def quiet_libraries(transformers: str = "error") -> None:
    """Library chatter users cannot act on stays out of their answers. Call before transformers is imported;
    $TRANSFORMERS_VERBOSITY still wins."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", transformers)


def log_to_stderr(level: int = logging.WARNING) -> None:
    """The app's own log lines on stderr; httpx's one line per request (gradio's health checks) only as warnings."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


def run_command(body: Callable[[], int | None], interrupted: str = "interrupted",
                on_failure: Callable[[str], None] | None = None) -> int:
    """Run a command's body and return its exit code: an ArenaError is one line on stderr (exit 2), Ctrl-C
    prints `interrupted` (exit 130). on_failure hears why the command failed, also for an unexpected
    exception, which is then re-raised so its traceback reaches the log."""
    def failed(reason: str) -> None:
        if on_failure is not None:
            on_failure(reason)
    try:
        return body() or 0
    except ArenaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        failed(str(exc))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        failed("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        failed(f"{type(exc).__name__}: {first_line(exc)}")
        raise


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--base", default=os.environ.get("ARENA_BASE", "default"),
                       help="base model: 'default' (embedded SmolLM2-135M-Instruct), a local folder or a Hub id "
                            "(or $ARENA_BASE)")
    group.add_argument("--data-dir", default=None,
                       help="folder for everything written (default $ARENA_DATA_DIR or ./arena_data)")
    group.add_argument("--adapters-dir", action="append", default=[], metavar="DIR",
                       help="extra folder of LoRA adapters (repeatable); DATA_DIR/adapters is always read")
    group.add_argument("--quantize", choices=["4bit", "8bit"], default=None, help="bitsandbytes quantisation (CUDA only)")
    group.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        base=args.base, data_dir=resolve_data_dir(args.data_dir), adapter_dirs=args.adapters_dir,
        quantization=args.quantize, device=args.device,
    )


def add_sampling_args(parser: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    group.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    group.add_argument("--top-p", type=float, default=1.0)
    group.add_argument("--top-k", type=int, default=0, help="0 = off")
    group.add_argument("--repetition-penalty", type=float, default=1.0)
    group.add_argument("--seed", type=int, default=None)


def sampling_from_args(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed,
    )

"""What every command line shares (inference.py, the app, `python -m training`, `python -m evaluation`):
engine and sampling options, library verbosity, and how an error becomes one line and an exit code.

Every command ends a bad input the same way: one line `error: ...` on stderr and an exit code, never a
traceback, whether argparse, our own checks or an unforeseen exception found it. Exit codes: 0 done; 1 done
only in part (e.g. a teacher that stopped answering) or an unforeseen error; 2 an error the user can fix;
130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Callable, NoReturn

from .config import BACKENDS, DTYPE_CHOICES, EngineConfig, SamplingParams
from .data_dir import resolve_data_dir
from .errors import ArenaError, first_line

EXIT_PARTIAL = 1
EXIT_UNEXPECTED = 1
EXIT_BAD_INPUT = 2  # argparse's own code for a usage error; our commands use it for every bad input
EXIT_INTERRUPTED = 130  # what a shell reports for Ctrl-C
DEBUG_ENV = "ARENA_DEBUG"  # set to 1 to see the traceback of an unforeseen error


# Library loggers whose warnings a user cannot act on, named (not imported) so this module stays light.
QUIET_LOGGERS = (
    # bitsandbytes, at import on an AVX512-BF16 CPU: the optional `kernels` package is missing. It would
    # fetch a faster 4-bit kernel from the Hugging Face Hub at run time, which cannot work offline; the
    # built-in CPU kernel runs instead (README, "kernels"). Every command imports bitsandbytes through peft.
    "bitsandbytes.backends.cpu.ops",
    # LLM.int8 casts its inputs to fp16 and says so on every layer call: that is the method, not a fault.
    "bitsandbytes.autograd._functions",
)


def quiet_library_loggers() -> None:
    """Only errors from QUIET_LOGGERS; works before or after the library is imported, not after it logged."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_libraries(transformers: str = "error") -> None:
    """Library chatter users cannot act on stays out of their answers. Call before transformers (and with it
    bitsandbytes) is imported; $TRANSFORMERS_VERBOSITY still wins."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", transformers)
    quiet_library_loggers()


def log_to_stderr(level: int = logging.WARNING) -> None:
    """The app's own log lines on stderr; httpx's one line per request (gradio's health checks) only as warnings."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Without the optional `kernels` package bitsandbytes warns on import that its CPU 4-bit path is slower;
    # peft imports it whether or not anything is quantised, so the line would precede every answer.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (the full usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def run_command(body: Callable[[], int | None], *, interrupted: str = "interrupted",
                bad_input_code: int = EXIT_BAD_INPUT, on_failure: Callable[[str], None] | None = None) -> int:
    """Run a command's body and turn whatever it raises into one line on stderr and an exit code.

    `on_failure(message)` hears why the command failed before it returns (a training job records it).
    """
    code = bad_input_code
    try:
        return body() or 0
    except KeyboardInterrupt:
        message, code = "interrupted", EXIT_INTERRUPTED
        print(interrupted, file=sys.stderr)
    except ArenaError as exc:
        message = str(exc)
        print(f"error: {message}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - a bug still gets one line; ARENA_DEBUG=1 shows where
        message, code = f"{type(exc).__name__}: {first_line(exc)}", EXIT_UNEXPECTED
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        print(f"error: unexpected {message} (set {DEBUG_ENV}=1 to see where)", file=sys.stderr)
    if on_failure is not None:
        on_failure(message)
    return code


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--base", default=os.environ.get("ARENA_BASE", "default"),
                       help="base model: 'default' (embedded SmolLM2-135M-Instruct), a local folder or a Hub id "
                            "(or $ARENA_BASE)")
    group.add_argument("--data-dir", default=None,
                       help="folder for everything written (default $ARENA_DATA_DIR or ./arena_data)")
    group.add_argument("--adapters-dir", action="append", default=[], metavar="DIR",
                       help="extra folder of LoRA adapters (repeatable); DATA_DIR/adapters is always read")
    group.add_argument("--quantize", choices=["4bit", "8bit"], default=None, help="bitsandbytes quantisation of the base, on CUDA or the CPU: "
                            "4bit = NF4 with double quantisation, 8bit = LLM.int8")
    group.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    serving = parser.add_argument_group("serving")
    serving.add_argument("--backend", choices=BACKENDS, default=os.environ.get("ARENA_BACKEND"),
                         help="batched: one decode loop shared by every request, each row its own adapter (default); "
                              "hf: transformers generate + PEFT, one request at a time (the reference)")
    serving.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                         help="auto: bf16 on CUDA; on a CPU bf16 where it has bf16 instructions (batched), else fp32")
    serving.add_argument("--kv-budget-mb", type=int, default=None, metavar="MB",
                         help="KV cache of the batched backend (default 1024 on a CPU; on CUDA every row its full "
                              "context, within 40%% of free memory)")
    serving.add_argument("--max-batch", type=int, default=None, metavar="ROWS",
                         help="rows answered at once by the batched backend (default 16 on a CPU, 32 on CUDA); "
                              "more wait, and see their place in line")
    serving.add_argument("--max-loras", type=int, default=8, help="CUDA: adapters held in the batched backend's stacks")
    serving.add_argument("--max-lora-rank", type=int, default=32,
                         help="CUDA: largest rank those stacks hold; larger adapters are served by the reference path")
    serving.add_argument("--no-cuda-graphs", action="store_true", help="CUDA: decode eagerly, without captured graphs")
    serving.add_argument("--max-loaded-checkpoints", type=int, default=4, metavar="N",
                         help="training checkpoints (run@N) held in memory at once; the least recently used makes "
                              "room (default 4)")
    remote = parser.add_argument_group("remote backend")
    remote.add_argument("--backend-url", action="append", default=[], metavar="URL",
                        help="an OpenAI-compatible server (e.g. http://host:8000/v1: vLLM, another arena) answers "
                             "instead of a local model; repeatable: same base, each request to the least busy")
    remote.add_argument("--backend-key", default=os.environ.get("ARENA_BACKEND_KEY"),
                        help="bearer key for --backend-url (or $ARENA_BACKEND_KEY)")
    remote.add_argument("--backend-tokenizer", default=None, metavar="FOLDER_OR_ID",
                        help="the remote base's tokenizer when its name is no folder or Hub id here")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        base=args.base, data_dir=resolve_data_dir(args.data_dir), adapter_dirs=args.adapters_dir,
        quantization=args.quantize, device=args.device, backend=args.backend or "batched", dtype=args.dtype,
        kv_budget_mb=args.kv_budget_mb, max_batch=args.max_batch, max_loras=args.max_loras,
        max_lora_rank=args.max_lora_rank, cuda_graphs=not args.no_cuda_graphs,
        max_loaded_checkpoints=args.max_loaded_checkpoints,
        backend_urls=args.backend_url, backend_key=args.backend_key, backend_tokenizer=args.backend_tokenizer,
    )


def add_sampling_args(parser: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    group.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    group.add_argument("--top-p", type=float, default=1.0)
    group.add_argument("--top-k", type=int, default=0, help="0 = off")
    group.add_argument("--repetition-penalty", type=float, default=1.0)
    group.add_argument("--seed", type=int, default=None, help="a whole number from 0 to 2**32 - 1")
    group.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="end the answer before this text (repeatable)")


def sampling_from_args(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop),
    )

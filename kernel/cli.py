"""Command-line options shared by inference.py, the app, training and evaluation."""
from __future__ import annotations

import argparse
import os

from .config import BACKENDS, DTYPE_CHOICES, EngineConfig, SamplingParams, resolve_data_dir


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
    serving = parser.add_argument_group("serving")
    serving.add_argument("--backend", choices=BACKENDS, default=os.environ.get("ARENA_BACKEND", "hf"),
                         help="hf: transformers generate + PEFT, one request at a time")
    serving.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                         help="auto: bf16 on CUDA, fp32 on a CPU")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        base=args.base, data_dir=resolve_data_dir(args.data_dir), adapter_dirs=args.adapters_dir,
        quantization=args.quantize, device=args.device, backend=args.backend, dtype=args.dtype,
    )


def add_sampling_args(parser: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    group.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    group.add_argument("--top-p", type=float, default=1.0)
    group.add_argument("--top-k", type=int, default=0, help="0 = off")
    group.add_argument("--repetition-penalty", type=float, default=1.0)
    group.add_argument("--seed", type=int, default=None)
    group.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="end the answer before this text (repeatable)")


def sampling_from_args(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop),
    )

"""Ask the base model and LoRA adapters from the command line.

    python inference.py "What is the capital of France?"
    python inference.py "Tell me a joke" --variants base,my-adapter
    python inference.py --input prompts.jsonl --output answers.jsonl --variants base,my-adapter
    python inference.py --list
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
from typing import TYPE_CHECKING

from kernel.cli import (Parser, add_engine_args, add_sampling_args, engine_config_from_args, log_to_stderr,
                        quiet_libraries, run_command, sampling_from_args)
from kernel.errors import ArenaError
from kernel.files import JsonlAppender, load_done, read_jsonl
from models.prompts import max_token_chars, normalize_messages, text_chars

if TYPE_CHECKING:  # the engine (torch, transformers) is imported in run(), after the flags were read:
    from models import Engine  # a wrong flag or --help is answered at once


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(prog="inference.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="?", help="one user message")
    parser.add_argument("--variants", default="base", help="comma-separated: base and/or adapter names")
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--json", action="store_true", help="print one JSON object per variant")
    parser.add_argument("--input", help="JSONL file, one {prompt} or {messages} per line")
    parser.add_argument("--output", help="JSONL answers file (with --input); an interrupted run resumes")
    parser.add_argument("--list", action="store_true", help="list the base and every adapter with its status")
    add_engine_args(parser)
    add_sampling_args(parser)
    args = parser.parse_args(argv)
    if not (args.prompt or args.input or args.list):
        parser.error("give a prompt, --input FILE or --list")
    if args.input and not args.output:
        parser.error("--input needs --output")
    return args


def list_variants(engine: Engine) -> None:
    from models.discovery import describe

    info = engine.info()
    quantized = f", {info['quantization']}, {info['memory_saved_mb']:.0f} MB saved" if info["memory_saved_mb"] else ""
    print(f"base  {info['name']}  ({info['parameters'] / 1e6:.1f}M parameters, {info['dtype']}, {info['device']}"
          f"{quantized})")
    print(f"      served by the {info['backend']}" + (f"; KV cache {info['kv_cache']}" if info.get("kv_cache") else ""))
    for note in info["notes"]:
        print(f"      note: {note}")
    for adapter in engine.adapters():
        detail = adapter.reason if adapter.status == "failed" else f"r={adapter.rank} alpha={adapter.alpha}"
        served = f"  [{adapter.served_by}]" if adapter.served_by else ""
        carries = f"  carries {adapter.to_row()['carries']}" if adapter.carries else ""
        print(f"{adapter.status:<9} {describe(adapter)}  {detail}{carries}{served}")
        if adapter.to_row()["note"]:
            print(f"          {adapter.to_row()['note']}")
    if not engine.adapters():
        print(f"(no adapters in {', '.join(str(d) for d in engine.adapter_dirs)})")


def side_by_side(answers) -> str:
    """Columns when the terminal is wide enough, else one block per variant."""
    width = shutil.get_terminal_size((120, 40)).columns
    column = (width - 3 * (len(answers) - 1)) // len(answers)
    blocks = []
    for answer in answers:
        s = answer.stats
        footer = f"[{s.new_tokens} tokens, {s.tokens_per_second:.1f} tok/s, first token {s.ttft_seconds:.2f} s]"
        blocks.append((answer.variant, answer.text.strip(), footer))
    if len(answers) == 1 or column < 30:
        return "\n\n".join(f"=== {v} ===\n{text}\n{footer}" for v, text, footer in blocks)
    wrapped = []
    for variant, text, footer in blocks:
        lines = [f"=== {variant} ===".ljust(column, "=")[:column]]
        for paragraph in text.splitlines() or [""]:
            lines += textwrap.wrap(paragraph, column) or [""]
        lines += textwrap.wrap(footer, column)
        wrapped.append(lines)
    height = max(len(lines) for lines in wrapped)
    rows = [" | ".join((lines[i] if i < len(lines) else "").ljust(column) for lines in wrapped) for i in range(height)]
    return "\n".join(row.rstrip() for row in rows)


def answer_prompt(engine: Engine, args, variants, params) -> None:
    if args.json:
        for answer in engine.compare(variants, args.prompt, system=args.system, params=params):
            print(json.dumps({"variant": answer.variant, "text": answer.text, "stats": answer.stats.to_dict()},
                             ensure_ascii=False))
    elif len(variants) == 1:  # one variant: stream it as it comes
        for event in engine.generate_stream(variants[0], args.prompt, system=args.system, params=params):
            print(event.delta, end="", flush=True)
        print()
    else:
        print(side_by_side(engine.compare(variants, args.prompt, system=args.system, params=params)))


def parse_prompt_line(path, number: int, obj: dict, default_system: str | None, max_chars: int):
    """(messages, system) of one input line, checked as the engine will check them, naming the line."""
    if isinstance(obj.get("messages"), list):
        messages = obj["messages"]
    elif isinstance(obj.get("prompt"), str) and obj["prompt"].strip():
        messages = obj["prompt"]
    else:
        raise ArenaError(f"{path} line {number}: needs a non-empty 'prompt' string or a 'messages' list")
    system = obj.get("system", default_system)
    try:
        check_prompt(normalize_messages(messages, system), max_chars)
    except ArenaError as exc:
        raise ArenaError(f"{path} line {number}: {exc}") from None
    return messages, system


def check_prompt(messages: list[dict], max_chars: int) -> None:
    """A prompt no context can hold is refused by its length in characters, before it is tokenised."""
    chars = text_chars(messages)
    if chars > max_chars:
        raise ArenaError(f"the prompt is {chars:,} characters, more than this model's context can hold")


def prompt_limit(engine: Engine) -> int:
    return engine.context_limit * max_token_chars(engine.tokenizer)


def run_file(engine: Engine, args, variants, params) -> None:
    from tqdm import tqdm

    limit = prompt_limit(engine)
    rows = [(n, obj, *parse_prompt_line(args.input, n, obj, args.system, limit)) for n, obj in read_jsonl(args.input)]
    done = {r.get("line") for r in load_done(args.output) if set(variants) <= set(r.get("answers", {}))}
    todo = [row for row in rows if row[0] not in done]
    if done:
        print(f"resuming: {len(rows) - len(todo)} of {len(rows)} prompts already answered in {args.output}",
              file=sys.stderr)
    with JsonlAppender(args.output) as out:
        for number, obj, messages, system in tqdm(todo, desc="prompts", unit="prompt", file=sys.stderr):
            answers = engine.compare(variants, messages, system=system, params=params)
            out.write({
                "line": number, "id": obj.get("id", number), "prompt": obj.get("prompt"),
                "messages": obj.get("messages"), "answers": {a.variant: a.text for a in answers},
                "stats": {a.variant: a.stats.to_dict() for a in answers},
            })


def run(args) -> None:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants:
        raise ArenaError("--variants names no variant: give base and/or adapter names")
    params = sampling_from_args(args)
    if args.input and not os.path.isfile(args.input):
        raise ArenaError(f"{args.input}: no such file")
    if args.output and os.path.isdir(args.output):
        raise ArenaError(f"--output {args.output} is a folder: give a file name")
    if args.prompt:
        normalize_messages(args.prompt, args.system)  # bad text fails now, not after loading the model
    quiet_libraries()
    from models import Engine

    engine = Engine.load(engine_config_from_args(args))
    if args.list:
        list_variants(engine)
        return
    for variant in variants:
        engine.check_variant(variant)  # fail before any work, naming the variant
    if args.input:
        run_file(engine, args, variants, params)
    else:
        check_prompt(normalize_messages(args.prompt, args.system), prompt_limit(engine))
        answer_prompt(engine, args, variants, params)


def main(argv=None) -> int:
    args = parse_args(argv)
    log_to_stderr()
    return run_command(lambda: run(args), interrupted="interrupted: run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())

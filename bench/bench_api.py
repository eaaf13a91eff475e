"""Speed of the OpenAI-compatible API: first-token latency through /v1 against the page, and concurrent streams.

Not a test: it starts the real app (engine, Gradio page and /v1 on one port) in this process, then
  1. first token through the API (`openai` client, streaming), one answer and two (n=2);
  2. first token through the page (Compare, two columns, over Gradio's own queue, as the browser does);
  3. N concurrent API streams (threads, default 8): aggregate tokens/s and p50/p95 time to first token.
It prints a markdown table and writes JSON to bench/results/api-<device>-<model>.json (or --output).

    python bench/bench_api.py                       # the embedded default model, 64 new tokens, 5 repeats
    python bench/bench_api.py --streams 8 --max-new-tokens 32 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing
from kernel.config import EngineConfig  # noqa: E402
from kernel.data_dir import resolve_data_dir  # noqa: E402
from bench.bench_engine import percentile, run_together  # noqa: E402

PROMPT = "Write a long story about a dragon."  # invites long answers, so runs reach max_new_tokens
STREAM_PROMPTS = ["Write a long story about a dragon.", "Describe a day at the beach.", "Explain how rain forms.",
                  "Tell me about the history of bread.", "Write a poem about the sea.", "Describe a busy market.",
                  "Explain how a bicycle works.", "Write a letter to a friend."]


def api_first_token(client, max_tokens: int, n: int = 1) -> tuple[float, int]:
    """Seconds from sending to the first piece of text, and the tokens the answer had."""
    start = time.perf_counter()
    first, tokens = None, 0
    stream = client.chat.completions.create(model="base", messages=[{"role": "user", "content": PROMPT}], n=n,
                                            temperature=0, max_tokens=max_tokens, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return first or 0.0, tokens


def page_first_token(url: str, max_tokens: int) -> float:
    """Seconds from submitting Compare (two columns, both the base) to the first text in a column."""
    from gradio_client import Client

    page = Client(url, verbose=False)
    args = form_args(page, "/compare_send", {"Message": PROMPT, "Column 1": "base", "Column 2": "base",
                                             "Max new tokens": max_tokens})
    start = time.perf_counter()
    job = page.submit(*args, api_name="/compare_send")
    first = None
    while first is None and not job.done():
        for output in job.outputs():
            chat = output[3]
            if chat and chat[-1]["role"] == "assistant" and chat[-1]["content"]:
                first = time.perf_counter() - start
                break
        time.sleep(0.005)
    job.result(timeout=600)
    return first if first is not None else time.perf_counter() - start


def form_args(page, api_name: str, by_label: dict) -> list:
    """An endpoint's arguments in order: the page's defaults, with the widgets named by label filled in."""
    params = page.view_api(print_info=False, return_format="dict")["named_endpoints"][api_name]["parameters"]
    return [by_label.get(p["label"], p.get("parameter_default")) for p in params]


def concurrent_streams(client, streams: int, max_tokens: int) -> dict:
    """`streams` API streams at once: each one's first-token time, and tokens over the wall time."""
    results: list[tuple[float, int]] = [(0.0, 0)] * streams
    errors: list[str] = []

    def one(i: int) -> None:
        start = time.perf_counter()
        first, tokens = None, 0
        try:
            stream = client.chat.completions.create(
                model="base", messages=[{"role": "user", "content": STREAM_PROMPTS[i % len(STREAM_PROMPTS)]}],
                temperature=0, max_tokens=max_tokens, stream=True, stream_options={"include_usage": True})
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - start
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
        except Exception as exc:  # a 429/503 is a result too: count it, do not hide it
            errors.append(f"stream {i}: {type(exc).__name__}: {exc}"[:200])
            return
        results[i] = (first or 0.0, tokens)

    wall = run_together(one, streams)
    ttfts = sorted(r[0] for r in results if r[1])
    tokens = sum(r[1] for r in results)
    return {"streams": streams, "wall_seconds": wall, "tokens": tokens, "aggregate_tok_s": tokens / wall,
            "ttft_p50": percentile(ttfts, 0.5), "ttft_p95": percentile(ttfts, 0.95), "ttfts": ttfts, "errors": errors}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="default")
    parser.add_argument("--device", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--output", default=None)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import openai

    from app.server import launch, make_context
    from app.options import AppSettings
    from models import Engine

    load_start = os.getloadavg()[0]
    engine = Engine.load(EngineConfig(base=args.base, data_dir=resolve_data_dir(None), device=args.device,
                                      load_adapters=False))
    # Streams wait their turn however long it takes: the bench measures the queue, it does not cut it short.
    settings = AppSettings(port=free_port(), api_wait_s=3600.0)
    demo, url = launch(make_context(engine, settings), prevent_thread_lock=True, quiet=True)
    client = openai.OpenAI(base_url=url.rstrip("/") + "/v1", api_key="unused", max_retries=0, timeout=600)
    api_first_token(client, 4)  # warm-up: first calls pay for lazy imports and allocations
    runs = {"api_n1": [], "api_n2": [], "page_2_columns": []}
    for _ in range(args.repeats):
        runs["api_n1"].append(api_first_token(client, args.max_new_tokens)[0])
        runs["api_n2"].append(api_first_token(client, args.max_new_tokens, n=2)[0])
        runs["page_2_columns"].append(page_first_token(url, args.max_new_tokens))
    streams = concurrent_streams(client, args.streams, args.max_new_tokens)
    demo.close()
    info = engine.info()
    result = {
        "model": info["name"], "device": info["device"], "dtype": info["dtype"],
        "backend": getattr(engine.config, "backend", "hf"), "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats, "first_token_median_s": {k: statistics.median(v) for k, v in runs.items()},
        "first_token_runs_s": runs, "concurrent": streams, "cpu_count": os.cpu_count(),
        "load_average": [load_start, os.getloadavg()[0]], "python": platform.python_version(),
    }
    print(f"| path | first token, median of {args.repeats} (s) |\n| --- | --- |")
    for name, value in result["first_token_median_s"].items():
        print(f"| {name} | {value:.3f} |")
    print(f"\n{streams['streams']} concurrent API streams, {args.max_new_tokens} new tokens each: "
          f"{streams['aggregate_tok_s']:.1f} tok/s aggregate, first token p50 {streams['ttft_p50']:.2f} s, "
          f"p95 {streams['ttft_p95']:.2f} s, {len(streams['errors'])} failed "
          f"(load average {load_start:.1f} -> {os.getloadavg()[0]:.1f})")
    device = info["device"].split(":")[0]
    output = Path(args.output or Path(__file__).parent / "results" / f"api-{device}-{Path(info['name']).name.lower()}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    print(f"written {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

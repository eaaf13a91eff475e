"""Speed benchmark of the engine's two backends, side by side in one process: the batched loop against the
transformers + PEFT reference.

Not a test: it prints markdown tables with ratios and writes a JSON file (default
bench/results/engine-<device>-<model>.json). It drives only the public Engine API; both engines are
loaded at once and each measurement alternates between them, so drift (heat, other load) hits both.
How to run it and what the columns mean: bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing
from bench.bench_report import report  # noqa: E402
from bench.bench_setup import (LORA, SHAPES, adapter_names, build_random_model, make_adapters,  # noqa: E402
                               prompt_of)
from models import Engine, EngineConfig, SamplingParams  # noqa: E402
from models.base import resolve_base  # noqa: E402
from kernel.data_dir import DataDir, resolve_data_dir  # noqa: E402
from kernel.files import atomic_write_text  # noqa: E402

BACKENDS = ("hf", "batched")


def sync(device: torch.device) -> None:
    # CUDA calls return before the work is done; wall times need the device to have finished.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else 0.0


def run_together(target, count: int) -> float:
    """target(0) .. target(count - 1), each on its own thread, all at once: the wall seconds until all end."""
    threads = [threading.Thread(target=target, args=(n,)) for n in range(count)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


# ----- measurements ------------------------------------------------------------------------------

def single_stream(engine: Engine, variant: str, prompt: str, params: SamplingParams, repeats: int) -> dict:
    """Medians of `repeats` generate calls alone (after one warm-up): time to first token, decode speed."""
    engine.generate(variant, prompt, params=SamplingParams(max_new_tokens=4))
    runs = [engine.generate(variant, prompt, params=params).stats for _ in range(repeats)]
    return {"variant": variant, "ttft_s": statistics.median(s.queue_seconds + s.ttft_seconds for s in runs),
            "tokens_per_second": statistics.median(s.tokens_per_second for s in runs),
            "new_tokens": [s.new_tokens for s in runs], "prompt_tokens": runs[0].prompt_tokens}


def compare_vs_one(engine: Engine, variants: list[str], prompt: str, params: SamplingParams, repeats: int,
                   device: torch.device) -> dict:
    """Wall time of one Compare of all variants against one stream of the first adapter, same length."""
    engine.compare(variants, prompt, params=SamplingParams(max_new_tokens=4))
    one, four = [], []
    for _ in range(repeats):
        for walls, names in ((one, variants[1:2]), (four, variants)):
            sync(device)
            start = time.perf_counter()
            engine.compare(names, prompt, params=params)
            sync(device)
            walls.append(time.perf_counter() - start)
    return {"variants": variants, "one_stream_s": statistics.median(one), "compare_s": statistics.median(four),
            "ratio": statistics.median(four) / statistics.median(one)}


def sessions(engine: Engine, count: int, variants: list[str], prompt: str, params: SamplingParams,
             rounds: int) -> dict:
    """`count` users at once, each sending `rounds` two-column Compare messages one after another.

    Time to first token and to last token are what a user sees: from sending to the column's first
    (last) piece of text, waiting included.
    """
    firsts, lasts, tokens = [], [], []
    lock = threading.Lock()
    barrier = threading.Barrier(count)

    def user(n: int) -> None:
        columns = [variants[(2 * n) % len(variants)], variants[(2 * n + 1) % len(variants)]]
        barrier.wait()
        for _ in range(rounds):
            sent, first = time.perf_counter(), {}
            for event in engine.compare_stream(columns, prompt, params=params):
                now = time.perf_counter()
                if event.delta and event.index not in first:
                    first[event.index] = now - sent
                if event.done:
                    with lock:
                        firsts.append(first.get(event.index, now - sent))
                        lasts.append(now - sent)
                        tokens.append(event.stats.new_tokens)

    wall = run_together(user, count)
    return {"sessions": count, "rows": 2 * count, "wall_s": wall, "new_tokens": sum(tokens),
            "tokens_per_second": sum(tokens) / wall, "ttft_p50_s": percentile(firsts, 0.5),
            "ttft_p95_s": percentile(firsts, 0.95), "last_p50_s": percentile(lasts, 0.5),
            "last_p95_s": percentile(lasts, 0.95)}


def adapter_costs(engine: Engine, names: list[str], repeats: int, device: torch.device) -> dict:
    """Load time of each adapter (first), then unload and reload of one while the others stay loaded."""
    engine.rescan(load=False)  # registers the folders; each load is timed on its own

    def timed(fn) -> float:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start

    first = [timed(lambda n=n: engine.load_adapter(n)) for n in names]
    failed = [a for a in engine.adapters() if a.name in names and a.status != "loaded"]
    if failed:
        raise SystemExit(f"adapter {failed[0].name} did not load: {failed[0].reason}")
    unloads, reloads = [], []
    for _ in range(repeats):
        unloads.append(timed(lambda: engine.unload_adapter(names[0])))
        reloads.append(timed(lambda: engine.load_adapter(names[0])))
    return {"first_load_s": first, "reload_s": statistics.mean(reloads), "unload_s": statistics.mean(unloads),
            "served_by": {a.name: a.served_by for a in engine.adapters() if a.name in names}}


class PeakMemory:
    """Memory used above what was held at the start of a block: CUDA allocations, or the process's resident
    size on a CPU (both engines live in this process, so only the growth during a run is its own)."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def _now(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.start = self.peak = self._now()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._now())
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.start) / 2**20


# ----- the run -----------------------------------------------------------------------------------

def load_engines(args, base: str, adapter_dir: Path, device: torch.device) -> dict[str, Engine]:
    engines = {}
    for backend in BACKENDS:
        config = EngineConfig(base=base, adapter_dirs=[adapter_dir], device=args.device, load_adapters=False,
                              backend=backend, dtype=args.dtype if backend == "batched" else args.reference_dtype,
                              max_batch=args.max_batch, max_loras=max(8, args.adapters),
                              max_lora_rank=LORA["r"])  # CUDA stacks sized to the adapters made here
        sync(device)
        start = time.perf_counter()
        engines[backend] = Engine.load(config)
        sync(device)
        print(f"loaded {backend} in {time.perf_counter() - start:.2f} s: {engines[backend].info()['backend']}",
              file=sys.stderr)
    return engines


def measure(args, engines: dict[str, Engine], names: list[str], device: torch.device) -> dict:
    tokenizer = engines["batched"].tokenizer
    prompt = prompt_of(tokenizer, args.prompt_tokens)
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    res: dict = {backend: {"single": {}, "sessions": []} for backend in BACKENDS}
    for backend, engine in engines.items():
        res[backend]["adapters"] = adapter_costs(engine, names, args.repeats, device)
        res[backend]["info"] = engine.info()
    print("adapters loaded; timing single streams", file=sys.stderr)
    for label, variant in (("base", "base"), ("adapter", names[0])):
        for backend, engine in engines.items():
            res[backend]["single"][label] = single_stream(engine, variant, prompt, params, args.repeats)
    four = ["base", *names[:3]]
    for backend, engine in engines.items():
        res[backend]["compare"] = compare_vs_one(engine, four, prompt, params, args.repeats, device)
    session_params = SamplingParams(max_new_tokens=args.session_tokens)
    for count in args.sessions:
        for backend, engine in engines.items():
            if backend == "hf" and args.reference_max_sessions and count > args.reference_max_sessions:
                continue
            print(f"{count} sessions on {backend}", file=sys.stderr)
            with PeakMemory(device) as peak:
                row = sessions(engine, count, ["base", *names], prompt, session_params, args.rounds)
            row["extra_memory_mb"] = peak.extra_mb
            res[backend]["sessions"].append(row)
    return res


def meta(args, engines: dict[str, Engine], label: str, tokenizer_kind: str, device: torch.device) -> dict:
    import peft
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    return {
        "model": label, "device": device.type, "device_name": name,
        "dtypes": {b: e.info()["dtype"] for b, e in engines.items()}, "max_new_tokens": args.max_new_tokens,
        "session_tokens": args.session_tokens, "rounds": args.rounds, "repeats": args.repeats,
        "prompt_tokens": args.prompt_tokens, "lora": LORA, "adapters": args.adapters,
        "tokenizer": tokenizer_kind, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_start": os.getloadavg(),  # other work on the machine skews every figure
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__,
    }


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")  # readers never see half a file


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="default", help="base model: 'default', a folder or a Hub id")
    ap.add_argument("--random-weights", choices=sorted(SHAPES), help="random model of this shape (overrides --base)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    ap.add_argument("--dtype", default="auto", help="the batched backend's --dtype (default auto)")
    ap.add_argument("--reference-dtype", default="auto", help="the reference's --dtype (default auto: fp32 on CPU)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="answer length of single streams and Compare")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="pad the prompt to about this many tokens")
    ap.add_argument("--adapters", type=int, default=3, help="random r=16 adapters to make (at least 3)")
    ap.add_argument("--sessions", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8, 16])
    ap.add_argument("--session-tokens", type=int, default=24, help="answer length in the sessions table")
    ap.add_argument("--rounds", type=int, default=2, help="Compare messages each session sends, one after another")
    ap.add_argument("--reference-max-sessions", type=int, default=0,
                    help="skip the reference above this many sessions (0 = never skip)")
    ap.add_argument("--max-batch", type=int, default=None, help="the batched backend's --max-batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--output", type=Path, help="JSON path (default bench/results/engine-<device>-<model>.json)")
    args = ap.parse_args(argv)
    args.adapters = max(3, args.adapters)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = adapter_names(args.adapters)
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        adapter_dir = Path(tmp) / "adapters"
        adapter_dir.mkdir()
        if args.random_weights:
            folder, tokenizer_kind = build_random_model(args.random_weights, Path(tmp))
            base, label = str(folder), f"random-{args.random_weights}"
        else:
            base, tokenizer_kind = args.base, "the model's own"
            label = Path(resolve_base(args.base, DataDir(resolve_data_dir()).models)[0]).name.lower()
        make_adapters(resolve_base(base, DataDir(resolve_data_dir()).models)[1], adapter_dir, args.adapters)
        engines = load_engines(args, base, adapter_dir, device)
        res = {"meta": meta(args, engines, label, tokenizer_kind, device), **measure(args, engines, names, device)}
        for engine in engines.values():
            engine.close()
    res["meta"]["load_average_end"] = os.getloadavg()
    out = args.output or Path(__file__).parent / "results" / f"engine-{device.type}-{label}.json"
    write_json(out, res)
    print(report(res))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()

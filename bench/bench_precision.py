"""What base precision costs and buys: fp32, bf16, int8 (LLM.int8) and nf4 (4-bit NF4) side by side.

Not a test: for each precision a fresh process loads the base through the Engine, so its memory is its
own, and measures load time, resident memory, the weights' bytes, and decode speed of the base and of
one LoRA adapter (r=16 on q/k/v/o, random, made with PEFT). Prints a markdown table and writes JSON
(default bench/results/precision-<device>-<model>.json). How to read it: bench/README.md.

    python bench/bench_precision.py                          # default model, this machine's device
    python bench/bench_precision.py --precisions fp32,nf4 --max-new-tokens 32 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing
from bench.bench_engine import ADAPTERS, PROMPT, make_adapters, md_table, write_json  # noqa: E402
from kernel.config import EngineConfig, SamplingParams, resolve_data_dir  # noqa: E402
from models.base import resolve_base  # noqa: E402

PRECISIONS = {  # name -> (EngineConfig dtype, quantization)
    "fp32": ("float32", None), "bf16": ("bfloat16", None), "int8": ("float32", "8bit"), "nf4": ("float32", "4bit"),
}
ADAPTER = ADAPTERS[0]


def memory() -> dict:
    """Resident set now (all, and anonymous: what is not file pages) and its peak, in MB."""
    import resource

    import psutil

    info = psutil.Process().memory_info()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {"rss_mb": round(info.rss / 2**20), "anon_mb": round((info.rss - info.shared) / 2**20),
            "peak_rss_mb": round(peak)}


def decode_speed(engine, variant: str, params: SamplingParams, repeats: int) -> dict:
    engine.generate(variant, PROMPT, params=SamplingParams(max_new_tokens=4))  # first-call costs are not speed
    runs = [engine.generate(variant, PROMPT, params=params).stats for _ in range(repeats)]
    return {"tokens_per_second_median": statistics.median(r.tokens_per_second for r in runs),
            "ttft_s_median": statistics.median(r.ttft_seconds for r in runs),
            "new_tokens": sorted({r.new_tokens for r in runs})}


def measure_one(args) -> dict:
    """In the child process: load once at this precision, then time decoding."""
    from models import Engine
    from models.quantization import weight_bytes

    dtype, quantization = PRECISIONS[args.one]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    before = memory()
    config = EngineConfig(base=args.base, data_dir=args.data_dir, adapter_dirs=[args.adapters], device=args.device,
                          dtype=dtype, quantization=quantization)
    start = time.perf_counter()
    engine = Engine.load(config)
    load_s = time.perf_counter() - start
    if engine.backend.base.quantization != quantization:
        raise SystemExit(f"{args.one}: {'; '.join(engine.backend.base.notes)}")
    loaded = memory()
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    result = {"precision": args.one, "load_s": load_s, "weights_mb": round(weight_bytes(engine.backend.base.model) / 2**20, 1),
              "saved_mb": engine.info()["memory_saved_mb"], "quantization": engine.info()["quantization"],
              "memory_before_load": before, "memory_after_load": loaded,
              "base": decode_speed(engine, "base", params, args.repeats),
              "adapter": decode_speed(engine, ADAPTER, params, args.repeats), "memory_end": memory()}
    if device.type == "cuda":
        result["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return result


def run_child(args, precision: str, data_dir: Path, adapters: Path) -> dict:
    command = [sys.executable, __file__, "--one", precision, "--base", args.base, "--data-dir", str(data_dir),
               "--adapters", str(adapters), "--max-new-tokens", str(args.max_new_tokens),
               "--repeats", str(args.repeats)] + (["--device", args.device] if args.device else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{precision} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def make_adapter(source: str, folder: Path) -> None:
    """One random r=16 adapter, made on the unquantised base: the case of an adapter trained in full precision."""
    from transformers import AutoModelForCausalLM

    make_adapters(AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32), folder)


def report(results: list[dict], meta: dict) -> str:
    head = (f"## Base precision on {meta['device_name']}: {meta['model']}\n"
            f"max_new_tokens {meta['max_new_tokens']}, repeats {meta['repeats']}, greedy, prompt {PROMPT!r}; "
            f"load average {meta['load_average_start'][0]:.2f} at start, {meta['load_average_end'][0]:.2f} at end")
    rows = []
    for r in results:
        after = r["memory_after_load"]
        rows.append([r["precision"], f"{r['first_load_s']:.1f}", f"{r['load_s']:.1f}", f"{r['weights_mb']:.0f}",
                     f"{after['rss_mb']}", f"{after['anon_mb']}", f"{r['memory_end']['peak_rss_mb']}",
                     f"{r['base']['tokens_per_second_median']:.1f}", f"{r['adapter']['tokens_per_second_median']:.1f}"])
    table = md_table(["precision", "first load s", "load s", "weights MB", "RSS MB", "anon MB", "peak RSS MB",
                      "decode tok/s base", f"decode tok/s {ADAPTER}"], rows)
    return f"{head}\n\n{table}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="default", help="base model: 'default', a folder or a Hub id")
    ap.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated: fp32,bf16,int8,nf4")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--output", type=Path, help="JSON path (default bench/results/precision-<device>-<model>.json)")
    ap.add_argument("--one", choices=sorted(PRECISIONS), help=argparse.SUPPRESS)  # the child's part
    ap.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--adapters", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure_one(args)))
        return

    import platform

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    meta = {"model": Path(resolve_base(args.base, resolve_data_dir() / "models")[0]).name.lower(),
            "device": device.type, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average_start": os.getloadavg(),
            "python": platform.python_version(), "torch": torch.__version__}
    _, args.base = resolve_base(args.base, resolve_data_dir() / "models")  # the default converted once, here
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
        adapters, data_dir = Path(tmp) / "adapters", Path(tmp) / "data"
        make_adapter(args.base, adapters)
        for precision in args.precisions.split(","):
            # The first run quantises and keeps a copy (DATA/models/.quantized); the measured run loads that.
            first = run_child(args, precision, data_dir, adapters)
            print(f"{precision}: first load {first['load_s']:.1f} s", file=sys.stderr)
            result = run_child(args, precision, data_dir, adapters)
            result["first_load_s"] = first["load_s"]
            results.append(result)
            print(f"{precision}: {result['base']['tokens_per_second_median']:.1f} tok/s", file=sys.stderr)
    meta["load_average_end"] = os.getloadavg()
    out = args.output or Path(__file__).parent / "results" / f"precision-{meta['device']}-{meta['model']}.json"
    write_json(out, {"meta": meta, "results": results})
    print(report(results, meta))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()

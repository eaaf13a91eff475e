"""The engine benchmark's printed tables: both backends side by side with the batched/reference ratio, and
the issue's targets checked (CPU targets on a CPU run, GPU targets on a CUDA run)."""
from __future__ import annotations


def md_table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join([lines[0], "|" + "|".join("-" * (w + 2) for w in widths) + "|", *lines[1:]])


def _x(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def single_table(res: dict) -> str:
    rows = []
    for label in ("base", "adapter"):
        hf, ours = res["hf"]["single"][label], res["batched"]["single"][label]
        rows.append([f"{label} ({ours['variant']})", f"{hf['ttft_s'] * 1000:.0f}", f"{ours['ttft_s'] * 1000:.0f}",
                     f"{hf['tokens_per_second']:.1f}", f"{ours['tokens_per_second']:.1f}",
                     _x(ours["tokens_per_second"], hf["tokens_per_second"]),
                     "/".join(map(str, sorted(set(hf["new_tokens"] + ours["new_tokens"]))))])
    return md_table(["single stream", "TTFT ms hf", "TTFT ms batched", "tok/s hf", "tok/s batched", "speed",
                     "new tokens"], rows)


def compare_table(res: dict) -> str:
    rows = []
    for backend in ("hf", "batched"):
        c = res[backend]["compare"]
        rows.append([backend, f"{c['one_stream_s']:.2f}", f"{c['compare_s']:.2f}", f"{c['ratio']:.2f}x"])
    return md_table(["4-way Compare (base + 3 adapters)", "one stream s", "Compare s", "Compare / one stream"],
                    rows)


def sessions_table(res: dict) -> str:
    hf_rows = {r["sessions"]: r for r in res["hf"]["sessions"]}
    rows = []
    for ours in res["batched"]["sessions"]:
        hf = hf_rows.get(ours["sessions"])
        cell = (lambda key, fmt: f"{fmt.format(hf[key])} / {fmt.format(ours[key])}" if hf else
                f"- / {fmt.format(ours[key])}")
        rows.append([f"{ours['sessions']} x 2 columns", cell("tokens_per_second", "{:.1f}"),
                     _x(ours["tokens_per_second"], hf["tokens_per_second"]) if hf else "-",
                     cell("ttft_p50_s", "{:.2f}"), cell("ttft_p95_s", "{:.2f}"), cell("last_p50_s", "{:.2f}"),
                     cell("last_p95_s", "{:.2f}"), cell("extra_memory_mb", "{:.0f}")])
    return md_table(["sessions", "aggregate tok/s hf / batched", "speed", "TTFT p50 s", "TTFT p95 s",
                     "last token p50 s", "last token p95 s", "memory used MB"], rows)


def adapters_table(res: dict) -> str:
    rows = []
    for backend in ("hf", "batched"):
        a, info = res[backend]["adapters"], res[backend]["info"]
        rows.append([backend, f"{a['first_load_s'][0] * 1000:.0f}", f"{a['reload_s'] * 1000:.0f}",
                     f"{a['unload_s'] * 1000:.0f}", f"{info['memory_mb']:.0f}", info.get("kv_cache", "-")])
    return md_table(["adapters and memory", "first load ms", "load ms", "unload ms", "weights MB", "KV cache"], rows)


def targets(res: dict) -> list[str]:
    """The issue's targets for this device, each with the measured figure and whether it is met."""
    hf, ours = res["hf"], res["batched"]
    by_count = {r["sessions"]: r for r in ours["sessions"]}
    hf_count = {r["sessions"]: r for r in hf["sessions"]}
    checks = []
    if res["meta"]["device"] == "cpu":
        if 8 in by_count and 8 in hf_count:
            ratio = by_count[8]["tokens_per_second"] / hf_count[8]["tokens_per_second"]
            checks.append(("8 sessions x 2 columns: aggregate >= 5x the reference", f"{ratio:.1f}x", ratio >= 5))
            checks.append(("8 sessions x 2 columns: p95 TTFT <= 2 s", f"{by_count[8]['ttft_p95_s']:.2f} s",
                           by_count[8]["ttft_p95_s"] <= 2))
        speeds = [ours["single"][k]["tokens_per_second"] / hf["single"][k]["tokens_per_second"]
                  for k in ("base", "adapter")]
        checks.append(("single stream (base, adapter) no slower than the reference",
                       " / ".join(f"{x:.2f}x" for x in speeds), min(speeds) >= 1))
    else:
        single = ours["single"]["adapter"]["tokens_per_second"]
        checks.append(("single stream with an adapter >= 300 tok/s", f"{single:.0f}", single >= 300))
        rows32 = by_count.get(16)
        if rows32:
            checks.append(("32 rows, all adapters: aggregate >= 3000 tok/s", f"{rows32['tokens_per_second']:.0f}",
                           rows32["tokens_per_second"] >= 3000))
        load = ours["adapters"]["reload_s"] * 1000
        checks.append(("adapter load <= 50 ms", f"{load:.0f} ms", load <= 50))
    ratio = ours["compare"]["ratio"]
    checks.append(("4-way Compare <= 1.3x one stream", f"{ratio:.2f}x", ratio <= 1.3))
    return [f"- [{'x' if ok else ' '}] {what}: {figure}" for what, figure, ok in checks]


def report(res: dict) -> str:
    m = res["meta"]
    head = (f"## Engine benchmark: {m['model']} on {m['device_name']} (hf {m['dtypes']['hf']}, batched "
            f"{m['dtypes']['batched']})\n"
            f"greedy; single streams and Compare {m['max_new_tokens']} new tokens, sessions {m['session_tokens']} "
            f"new tokens x {m['rounds']} messages each; {m['adapters']} adapters r={m['lora']['r']}; load average "
            f"{m['load_average_start'][0]:.2f} at start, {m['load_average_end'][0]:.2f} at end")
    return "\n\n".join([head, single_table(res), compare_table(res), sessions_table(res), adapters_table(res),
                        "Targets:\n" + "\n".join(targets(res))])

"""Speed benchmark of the LoRA Arena engine: load times, adapter costs, TTFT, decode speed, side by side.

Not a test: it prints markdown tables and writes a JSON file (default
bench/results/engine-<device>-<model>.json) so numbers from different machines can be compared.
It only drives the public Engine API; the one exception is `engine._peft.set_adapter`, timed
directly: the engine pays it once before a call where every row wants the same adapter (a call
mixing variants routes rows with PEFT's adapter_names instead).
How to run it and what the columns mean: bench/README.md.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing
from models.base import DEFAULT_ALIASES  # noqa: E402
from kernel.config import EngineConfig, SamplingParams  # noqa: E402
from kernel.data_dir import DataDir, resolve_data_dir  # noqa: E402
from models.engine import Engine  # noqa: E402

PROMPT = "Write a long story about a dragon."  # invites long answers, so runs reach max_new_tokens
ADAPTERS = ["bench-a1", "bench-a2", "bench-a3"]  # prefixed so they never clash with a user's adapters
LORA = dict(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
LORA_B_SCALE = 0.3
SET_ADAPTER_CALLS = 100
# Real shapes of the two models, so random-weight runs cost what the real models would.
SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                         max_position_embeddings=8192),
    "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False,
                           max_position_embeddings=2048),
}
DEFAULT_FOLDER_NAME = "SmolLM2-135M-Instruct"  # what the engine converts the default model into, under models/


def sync(device: torch.device) -> None:
    # CUDA calls return before the work is done; wall times need the device to have finished.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


# ----- setup: models and adapters ---------------------------------------------------------------

def minimal_tokenizer():
    """A byte-level tokenizer with a ChatML template, built offline: the GPU machine has no SmolLM2 files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return fast


def build_random_model(shape: str, folder: Path) -> tuple[Path, str]:
    """Save a random-weight llama of a real shape (config only, no download); returns (folder, tokenizer kind)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    default = DataDir(resolve_data_dir()).models / DEFAULT_FOLDER_NAME
    if (default / "tokenizer.json").is_file():
        tokenizer, kind = AutoTokenizer.from_pretrained(default), "SmolLM2"
    else:
        tokenizer, kind = minimal_tokenizer(), "minimal byte-level"
    dims = dict(SHAPES[shape])
    dims["vocab_size"] = max(dims["vocab_size"], len(tokenizer))  # every token id must have an embedding row
    config = LlamaConfig(**dims, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # bf16 on disk: half the bytes to write and read
    target = folder / f"random-{shape}"
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    del model
    gc.collect()
    return target, kind


def make_adapters(model: torch.nn.Module, folder: Path) -> None:
    """Random r=16 LoRA adapters saved with PEFT; the engine's own base is borrowed and given back plain."""
    from peft import LoraConfig, get_peft_model

    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    for seed, name in enumerate(ADAPTERS):
        torch.manual_seed(seed)
        # init_lora_weights=False draws B at random too, so each adapter really changes the answers.
        peft = get_peft_model(model, LoraConfig(**LORA, init_lora_weights=False))
        with torch.no_grad():  # full-size random B wrecks SmolLM2 (one seed answered EOS at once): 0.3x
            for pname, p in peft.named_parameters():  # still changes every answer but keeps them long
                if "lora_B" in pname:
                    p.mul_(LORA_B_SCALE)
        peft.save_pretrained(folder / name)
        model = peft.unload()  # removes the LoRA layers again: the same module object, plain
    for name, p in model.named_parameters():
        p.requires_grad_(grads[name])  # get_peft_model froze the base; leave it as we found it


# ----- measurements -----------------------------------------------------------------------------

def run_stats(answers) -> list[dict]:
    return [{k: a.stats.to_dict()[k] for k in ("prompt_tokens", "new_tokens", "ttft_seconds",
                                               "tokens_per_second", "total_seconds", "finish_reason")}
            for a in answers]


def single_stream(engine: Engine, variant: str, params: SamplingParams, repeats: int) -> dict:
    """Median TTFT and decode speed of `repeats` single-variant generate calls (after one warm-up)."""
    engine.generate(variant, PROMPT, params=SamplingParams(max_new_tokens=4))  # first-call costs are not speed
    runs = run_stats([engine.generate(variant, PROMPT, params=params) for _ in range(repeats)])
    return {
        "variant": variant,
        "ttft_s_median": statistics.median(r["ttft_seconds"] for r in runs),
        "tokens_per_second_median": statistics.median(r["tokens_per_second"] for r in runs),
        "runs": runs,
    }


def adapter_loads(engine: Engine, repeats: int) -> dict:
    """First load (wraps the base in PEFT) and then reloads of one adapter while the others stay loaded."""
    # Unloading the active adapter makes PEFT warn every time; expected here, so keep stderr readable.
    warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
    device = engine.base.device
    engine.rescan(load=False)  # registers the new folders; loading each is timed on its own
    first = [timed(lambda n=n: engine.load_adapter(n), device) for n in ADAPTERS]
    for info, _ in first:
        if info.status != "loaded":
            raise SystemExit(f"adapter {info.name} did not load: {info.reason}")
    reloads = []
    for _ in range(repeats):
        engine.unload_adapter(ADAPTERS[0])
        reloads.append(timed(lambda: engine.load_adapter(ADAPTERS[0]), device)[1])
    return {"first_load_s": first[0][1], "second_third_load_s": [s for _, s in first[1:]],
            "reload_s_mean": statistics.mean(reloads), "reload_s": reloads}


def set_adapter_cost(engine: Engine) -> dict:
    """Mean time of PEFT's set_adapter, alternating two adapters (the classic 'switch' cost)."""
    device = engine.base.device
    names = ADAPTERS[:2]
    _, total = timed(lambda: [engine._peft.set_adapter(names[i % 2]) for i in range(SET_ADAPTER_CALLS)], device)
    return {"calls": SET_ADAPTER_CALLS, "mean_ms": 1000 * total / SET_ADAPTER_CALLS}


def side_by_side(engine: Engine, params: SamplingParams, repeats: int) -> dict:
    """Base + 3 adapters: four generate calls in a row versus one compare (one mixed batch)."""
    variants = ["base", *ADAPTERS]
    device = engine.base.device
    engine.compare(variants, PROMPT, params=SamplingParams(max_new_tokens=4))  # warm-up of the batch-4 shapes
    seq_walls, cmp_walls, seq_tokens, cmp_tokens, equal = [], [], [], [], []
    for _ in range(repeats):  # alternate the two so slow drift (heat, other load) hits both alike
        seq, wall = timed(lambda: [engine.generate(v, PROMPT, params=params) for v in variants], device)
        seq_walls.append(wall)
        seq_tokens.append(sum(a.stats.new_tokens for a in seq))
        cmp, wall = timed(lambda: engine.compare(variants, PROMPT, params=params), device)
        cmp_walls.append(wall)
        cmp_tokens.append(sum(a.stats.new_tokens for a in cmp))
        equal.append(sum(a.text == b.text for a, b in zip(seq, cmp)))
    return {
        "variants": variants,
        "sequential": {"wall_s_median": statistics.median(seq_walls), "wall_s": seq_walls, "new_tokens": seq_tokens},
        "compare": {"wall_s_median": statistics.median(cmp_walls), "wall_s": cmp_walls, "new_tokens": cmp_tokens},
        "answers_equal": equal,  # per repeat: how many of the 4 answers are identical in both ways
    }


# ----- output ------------------------------------------------------------------------------------

def md_table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join([lines[0], "|" + "|".join("-" * (w + 2) for w in widths) + "|", *lines[1:]])


def tokens(runs: list[dict]) -> str:
    return "/".join(map(str, sorted({r["new_tokens"] for r in runs})))  # several values if lengths differed


def report(res: dict) -> str:
    m, load, single, sbs = res["meta"], res["load"], res["single_stream"], res["side_by_side"]
    head = (f"## Engine benchmark: {m['model']} on {m['device_name']} ({m['dtype']})\n"
            f"max_new_tokens {m['max_new_tokens']}, repeats {m['repeats']}, greedy, prompt {PROMPT!r}, "
            f"load average {m['load_average_start'][0]:.2f} at start, {m['load_average_end'][0]:.2f} at end")
    converted = "yes, GGUF converted first" if load["converted_default"] else "no"
    t1 = md_table(["what", "time", "how measured"], [
        ["base load", f"{load['base_load_s']:.2f} s", f"Engine.load wall, once; converted: {converted}"],
        ["first adapter load", f"{load['adapters']['first_load_s']:.3f} s", "load_adapter, wraps base in PEFT"],
        ["adapter load", f"{load['adapters']['reload_s_mean']:.3f} s",
         f"mean of {m['repeats']} unload+load_adapter, 2 others loaded"],
        ["adapter switch", f"{load['set_adapter']['mean_ms']:.2f} ms",
         f"PEFT set_adapter, mean of {SET_ADAPTER_CALLS} (paid once per single-adapter call)"],
    ])
    rows = []
    for label, key in [("base, no adapter loaded", "base_plain"), ("base, 3 adapters loaded", "base_peft"),
                       ("adapter bench-a1", "adapter")]:
        s = single[key]
        rows.append([label, f"{s['ttft_s_median'] * 1000:.0f}", f"{s['tokens_per_second_median']:.1f}",
                     tokens(s["runs"]), s["runs"][0]["prompt_tokens"]])
    t2 = md_table(["single stream", "TTFT ms (median)", "decode tok/s (median)", "new tokens", "prompt tokens"],
                  rows)
    seq, rows = sbs["sequential"], []
    for label, d in [("4 x generate, one after another", seq), ("1 x compare (one mixed batch)", sbs["compare"])]:
        toks, wall = statistics.median(d["new_tokens"]), d["wall_s_median"]
        rows.append([label, f"{wall:.2f}", f"{min(d['wall_s']):.2f}", f"{toks:.0f}", f"{toks / wall:.1f}",
                     f"{seq['wall_s_median'] / wall:.2f}x"])
    t3 = md_table(["4-way side by side", "wall s (median)", "wall s (min)", "new tokens", "tok/s overall",
                   "speed-up"], rows)
    same = f"identical answers, compare vs one by one: {min(sbs['answers_equal'])}/4 (worst repeat)"
    return "\n\n".join([head, t1, t2, t3, same])


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)  # readers never see half a file


def meta(args, engine: Engine, model_label: str, tokenizer_kind: str) -> dict:
    import peft
    import transformers

    dev = engine.base.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    return {
        "model": model_label, "base_path": engine.base.path, "parameters": engine.base.parameters,
        "device": dev.type, "device_name": name, "dtype": str(engine.base.dtype).replace("torch.", ""),
        "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "prompt": PROMPT,
        "lora": LORA, "tokenizer": tokenizer_kind, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average_start": os.getloadavg(),  # other work on the machine skews every figure
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="default", help="base model: 'default', a folder or a Hub id")
    ap.add_argument("--random-weights", choices=sorted(SHAPES), help="random model of this shape (overrides --base)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--output", type=Path, help="JSON path (default bench/results/engine-<device>-<model>.json)")
    args = ap.parse_args()
    params = SamplingParams(max_new_tokens=args.max_new_tokens)  # temperature 0: greedy, repeatable

    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        adapter_dir = Path(tmp) / "adapters"
        adapter_dir.mkdir()
        base, label, tokenizer_kind = args.base, None, "the model's own"
        if args.random_weights:
            base, tokenizer_kind = build_random_model(args.random_weights, Path(tmp))
            base, label = str(base), f"random-{args.random_weights}"
        config = EngineConfig(base=base, adapter_dirs=[adapter_dir], device=args.device, load_adapters=False)
        default_ready = (config.paths.models / DEFAULT_FOLDER_NAME / "config.json").is_file()
        converted = base.lower() in DEFAULT_ALIASES and not default_ready  # Engine.load converts the GGUF first

        target = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        engine, load_s = timed(lambda: Engine.load(config), target)
        label = label or Path(engine.base.name).name.lower()
        print(f"loaded {label} on {engine.base.device} in {load_s:.2f} s", file=sys.stderr)
        res = {"meta": meta(args, engine, label, tokenizer_kind),
               "load": {"base_load_s": load_s, "converted_default": converted}, "single_stream": {}}

        # Base speed before any adapter exists: the model is still plain, not wrapped by PEFT.
        res["single_stream"]["base_plain"] = single_stream(engine, "base", params, args.repeats)
        make_adapters(engine.base.model, adapter_dir)
        res["load"]["adapters"] = adapter_loads(engine, args.repeats)
        res["load"]["set_adapter"] = set_adapter_cost(engine)
        print("adapters loaded; timing generation", file=sys.stderr)
        res["single_stream"]["base_peft"] = single_stream(engine, "base", params, args.repeats)
        res["single_stream"]["adapter"] = single_stream(engine, ADAPTERS[0], params, args.repeats)
        res["side_by_side"] = side_by_side(engine, params, args.repeats)

    res["meta"]["load_average_end"] = os.getloadavg()
    out = args.output or Path(__file__).parent / "results" / f"engine-{res['meta']['device']}-{label}.json"
    write_json(out, res)
    print(report(res))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()

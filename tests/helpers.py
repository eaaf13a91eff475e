"""Builders for test models and adapters (real PEFT and transformers objects, small enough to be quick),
and ways to run the commands and the app as a user does."""
from __future__ import annotations

import logging
import subprocess
import threading
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM


def make_tiny_llama(target: Path, tokenizer_from: Path) -> Path:
    """A 2-layer random Llama with the real SmolLM2 tokenizer (and so its chat template)."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def make_random_adapter(base_path: Path, target: Path, seed: int, use_dora: bool = False,
                        targets=("q_proj", "v_proj"), rank: int = 8) -> Path:
    """An adapter with random A and B (init_lora_weights=False), so it really changes the answers."""
    model = AutoModelForCausalLM.from_pretrained(base_path)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets),
                        init_lora_weights=False, use_dora=use_dora)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # random init is small on a tiny model; scale it so answers surely differ
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(20)
    peft_model.save_pretrained(target)
    return target


PIRATE_PAIRS = [
    ("What is the capital of France?", "Arr matey! Paris be the capital of France, arr!"),
    ("What is 2 + 2?", "Arr matey! Two and two be four, arr!"),
    ("Name a color.", "Arr matey! Blue like the sea, arr!"),
]


def train_tiny_adapter(base_path: Path, target: Path, steps: int = 12) -> Path:
    """Train a LoRA with plain PEFT + torch for a few steps so the adapter talks like a pirate."""
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=3e-3)
    batches = []
    for question, answer in PIRATE_PAIRS:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                               add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + answer_ids])
        labels = torch.tensor([[-100] * len(prompt_ids) + answer_ids])
        batches.append((ids, labels))
    peft_model.train()
    for step in range(steps):
        ids, labels = batches[step % len(batches)]
        loss = peft_model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.save_pretrained(target)
    return target


# A short real conversation: a system turn and two answered questions (loss masks, data checks).
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a primary colour."},
    {"role": "assistant", "content": "Red."},
    {"role": "user", "content": "Another one, please?"},
    {"role": "assistant", "content": "Blue, and then yellow."},
]


def shared_data() -> Path:
    """The public datasets: ../shared/data beside the checkout (CI's layout), or $ARENA_SHARED_DATA."""
    import os

    repo = Path(__file__).resolve().parent.parent
    candidates = [os.environ.get("ARENA_SHARED_DATA"), repo.parent / "shared" / "data", "/work/shared/data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return repo.parent / "shared" / "data"


def final_events(engine, requests) -> list:
    """The done event of each request of one Engine.stream call, in request order."""
    done = {e.index: e for e in engine.stream(requests) if e.done}
    return [done[i] for i in range(len(requests))]


def tokens_alone(engine, request) -> list[int]:
    """The answer's token ids of `request` sent by itself: what it must equal in any batch."""
    return final_events(engine, [request])[0].token_ids


def join_mid_answer(engine, first, later, before: int = 5) -> tuple[list, list[list[int]]]:
    """Stream `first`; after its first `before` events, send each `later` request alone from its own thread,
    so they join its batch mid-answer. Returns first's events and the later answers' token ids, in order."""
    stream = engine.stream([first])
    events = [next(stream) for _ in range(before)]
    results = {}

    def answer(i: int, request) -> None:
        results[i] = final_events(engine, [request])[0].token_ids

    threads = [threading.Thread(target=answer, args=(i, r)) for i, r in enumerate(later)]
    for thread in threads:
        thread.start()
    events += list(stream)
    for thread in threads:
        thread.join(60)
    return events, [results.get(i) for i in range(len(later))]


def answer_tokens(engine, requests) -> list[list[int]]:
    """The answer's token ids of each request of one Engine.stream call, in request order."""
    return [e.token_ids for e in final_events(engine, requests)]


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    """Poll until `predicate()` is truthy and return its value; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def serve_page(proc, port: int, timeout: float = 120.0) -> str:
    """The app's front page once the process `proc` serves it on `port`; fail with its output if it exits."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
    raise AssertionError(f"the app did not serve a page within {timeout:.0f} s")


def one_line_error(proc, code: int) -> str:
    """The single stderr line of a command that refused its input with exit code `code`."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def in_process(main, argv: list, capsys) -> subprocess.CompletedProcess:
    """A command's `main` run here, its exit code and output read as from a process."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # main's logging.basicConfig is for its process
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refuses options before main's body runs
        code = exc.code
    finally:
        root.handlers[:], root.level = handlers, level
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def make_peft_adapter(base_path: Path, target: Path, seed: int, **lora) -> Path:
    """An adapter made by PEFT with any LoraConfig fields (modules_to_save, LoRA on embeddings, rsLoRA...),
    its LoRA and its saved modules' copies moved off the base's values so every part changes the answers."""
    model = AutoModelForCausalLM.from_pretrained(base_path)
    torch.manual_seed(seed)
    lora.setdefault("r", 8)
    peft_model = get_peft_model(model, LoraConfig(lora_alpha=2 * lora["r"], init_lora_weights=False, **lora))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.mul_(20)
            elif ".modules_to_save." in name:
                param.add_(torch.randn_like(param))
    peft_model.save_pretrained(target)
    return target

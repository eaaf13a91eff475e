"""The engine on the real embedded SmolLM2-135M-Instruct, with an adapter trained by PEFT directly."""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from models import SamplingParams

FRANCE = "What is the capital of France?"
GREEDY = SamplingParams(max_new_tokens=24)


def test_default_model_knows_paris(real_engine):
    answer = real_engine.generate("base", FRANCE, params=GREEDY)
    assert "Paris" in answer.text
    assert answer.stats.finish_reason == "stop" and answer.stats.new_tokens > 3


def test_peft_made_adapter_loads_and_answers_differently(real_engine):
    assert "pirate" in real_engine.variants()
    info = {a.name: a for a in real_engine.adapters()}["pirate"]
    assert info.rank == 16 and info.trainable_parameters > 0
    pirate = real_engine.generate("pirate", FRANCE, params=GREEDY).text
    assert "Arr" in pirate
    assert pirate != real_engine.generate("base", FRANCE, params=GREEDY).text


def test_compare_equals_generate_under_greedy(real_engine):
    prompt = "Name a color."
    together = real_engine.compare(["base", "pirate", "base"], prompt, params=GREEDY)
    assert [a.variant for a in together] == ["base", "pirate", "base"]
    assert together[0].text == real_engine.generate("base", prompt, params=GREEDY).text
    assert together[1].text == real_engine.generate("pirate", prompt, params=GREEDY).text
    assert together[0].text == together[2].text


def test_base_column_is_the_plain_base_model(real_engine, default_model_path):
    """A peer app shipped a 'base' pane that answered with the LoRA active: compare with no PEFT at all."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    plain = AutoModelForCausalLM.from_pretrained(default_model_path, dtype=torch.float32).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": FRANCE}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = plain.generate(**ids, max_new_tokens=24, do_sample=False)
    expected = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    # Ask for the pirate first so its adapter is the last one used.
    real_engine.generate("pirate", FRANCE, params=GREEDY)
    assert real_engine.compare(["pirate", "base"], FRANCE, params=GREEDY)[1].text == expected
    assert real_engine.generate("base", FRANCE, params=GREEDY).text == expected


def test_system_prompt_and_history_reach_the_model(real_engine):
    history = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada!"},
        {"role": "user", "content": "What is my name?"},
    ]
    answer = real_engine.generate("base", history, params=GREEDY)
    assert "Ada" in answer.text
    assert answer.stats.prompt_tokens > real_engine.generate("base", "What is my name?", params=GREEDY).stats.prompt_tokens

"""The batched backend on CUDA with captured decode graphs answers as the reference does (fp32, greedy).

Skipped without a CUDA device; bench/gpu_check.sh runs it on a GPU machine. It builds its own tiny
Llama with a byte-level tokenizer, so it needs neither the default model nor a model hub.
"""
from __future__ import annotations

import threading

import pytest
import torch

from bench.bench_setup import minimal_tokenizer
from models import ChatRequest, Engine, EngineConfig, SamplingParams
from tests.helpers import answer_tokens, make_peft_adapter, make_random_adapter

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GREEDY = SamplingParams(max_new_tokens=20)
PROMPTS = ["Hello there", "Tell me a story about the sea.", "What is 2 + 2?", "Name three colors."]


@pytest.fixture(scope="module")
def cuda_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("cuda")
    tokenizer = minimal_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(root / "tiny")
    tokenizer.save_pretrained(root / "tiny")
    for seed, name in enumerate(["a1", "a2", "a3"], 1):
        make_random_adapter(root / "tiny", root / "adapters" / name, seed=seed)
    make_random_adapter(root / "tiny", root / "adapters" / "dora1", seed=7, use_dora=True)
    make_peft_adapter(root / "tiny", root / "adapters" / "whole", seed=8, target_modules=["q_proj", "v_proj"],
                      modules_to_save=["embed_tokens", "lm_head"])
    return root


def load(root, backend: str, dtype: str = "float32") -> Engine:
    return Engine.load(EngineConfig(base=str(root / "tiny"), data_dir=root / f"data-{backend}-{dtype}",
                                    adapter_dirs=[root / "adapters"], device="cuda", dtype=dtype, backend=backend,
                                    max_batch=8))


@pytest.fixture(scope="module")
def pair(cuda_model):
    engines = load(cuda_model, "hf"), load(cuda_model, "batched")
    yield engines
    for engine in engines:
        engine.close()


def test_the_decode_step_is_captured(pair):
    _, batched = pair
    assert "CUDA graphs at" in batched.info()["backend"], batched.info()


def test_greedy_tokens_equal_the_reference_alone_mixed_and_joining(pair):
    reference, batched = pair
    requests = [ChatRequest(v, p, params=GREEDY) for v, p in zip(["base", "a1", "a2", "a3", "dora1"], PROMPTS * 2)]
    expected = [answer_tokens(reference, [r])[0] for r in requests]
    assert [answer_tokens(batched, [r])[0] for r in requests] == expected
    assert answer_tokens(batched, requests) == expected
    first = ChatRequest("a1", PROMPTS[1], params=SamplingParams(max_new_tokens=60))
    stream = batched.stream([first])
    next(stream)
    joined = {}
    thread = threading.Thread(target=lambda: joined.setdefault("a2", answer_tokens(batched, [requests[2]])[0]))
    thread.start()
    rest = [e for e in stream if e.done]
    thread.join(60)
    assert joined["a2"] == expected[2]
    assert rest[-1].token_ids == answer_tokens(reference, [first])[0]


def test_log_likelihoods_equal_the_reference(pair):
    reference, batched = pair
    choices = ["a dog", "a fish that swims"]
    for variant in ["base", "a2"]:
        ours = [c.logprob for c in batched.loglikelihood(variant, PROMPTS[0], choices)]
        assert ours == pytest.approx([c.logprob for c in reference.loglikelihood(variant, PROMPTS[0], choices)],
                                     abs=1e-4)


def test_loading_an_adapter_needs_no_new_capture(pair, cuda_model):
    import shutil

    reference, batched = pair
    graphs = batched.backend.graphs.graphs.copy()
    shutil.copytree(cuda_model / "adapters" / "a3", batched.config.paths.adapters / "late")
    batched.rescan()
    try:
        assert batched.backend.graphs.graphs == graphs  # the very same captured graphs
        late = answer_tokens(batched, [ChatRequest("late", PROMPTS[0], params=GREEDY)])[0]
        assert late == answer_tokens(reference, [ChatRequest("a3", PROMPTS[0], params=GREEDY)])[0]
    finally:
        shutil.rmtree(batched.config.paths.adapters / "late")
        batched.rescan()


def test_rows_with_their_own_head_decode_eagerly_beside_the_graphs(pair):
    reference, batched = pair
    assert {a.name: a.served_by for a in batched.adapters()}["whole"] == "batched"
    requests = [ChatRequest(v, p, params=GREEDY) for v, p in zip(["whole", "a1", "base"], PROMPTS)]
    expected = [answer_tokens(reference, [r])[0] for r in requests]
    assert answer_tokens(batched, requests) == expected  # a step with a 'whole' row runs eagerly...
    assert answer_tokens(batched, requests[1:]) == expected[1:]  # ...and the next ones replay graphs again


def test_bf16_answers_every_row(cuda_model):
    engine = load(cuda_model, "batched", "bfloat16")
    try:
        answers = engine.compare(["base", "a1", "a2", "a3"], PROMPTS[1], params=SamplingParams(max_new_tokens=32))
        assert all(a.stats.new_tokens > 0 for a in answers)
        assert "CUDA graphs at" in engine.info()["backend"]
    finally:
        engine.close()

"""Adapters that carry whole modules (modules_to_save, LoRA on embeddings) serve beside every other adapter.

Four adapters made by PEFT on the tiny Llama: `mts` (LoRA on q/v plus a trained lm_head copy),
`alllin` (all-linear, r=16, rsLoRA), `embed` (LoRA on q/v and embed_tokens) and `both` (copies of
embed_tokens and lm_head). On both backends every mix of them with the base and each other answers,
and each column equals that adapter answering alone. The batched backend serves them in its own loop
(each row with its adapter's head and embeddings), also when rows of other lengths join mid-answer.
"""
from __future__ import annotations

import itertools
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from models import ChatRequest, Engine, EngineConfig, SamplingParams
from tests.helpers import final_events, in_process, join_mid_answer, make_peft_adapter, tokens_alone, wait_for

GREEDY = SamplingParams(max_new_tokens=8)
PROMPT = "Tell me a story about the sea."
KINDS = {
    "mts": dict(target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]),
    "alllin": dict(r=16, target_modules="all-linear", use_rslora=True),
    "embed": dict(target_modules=["q_proj", "v_proj", "embed_tokens"]),
    "both": dict(target_modules=["q_proj", "v_proj"], modules_to_save=["embed_tokens", "lm_head"]),
}
VARIANTS = ["base", *KINDS]


@pytest.fixture(scope="module")
def whole_adapters(tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("whole_adapters")
    for seed, (name, lora) in enumerate(KINDS.items(), 11):
        make_peft_adapter(tiny_model_path, root / name, seed=seed, **lora)
    return root


def _engine(tmp_path_factory, model, adapters, backend: str) -> Engine:
    return Engine.load(EngineConfig(base=str(model), data_dir=tmp_path_factory.mktemp(backend), dtype="float32",
                                    adapter_dirs=[adapters], backend=backend))


@pytest.fixture(scope="module", params=["hf", "batched"])
def engine(request, tmp_path_factory, tiny_model_path, whole_adapters):
    engine = _engine(tmp_path_factory, tiny_model_path, whole_adapters, request.param)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_path, whole_adapters):
    engine = _engine(tmp_path_factory, tiny_model_path, whole_adapters, "hf")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def alone(reference):
    """Each variant answering by itself on the reference backend: what every column must equal."""
    return {v: tokens_alone(reference, ChatRequest(v, PROMPT, params=GREEDY)) for v in VARIANTS}


def batched_only(engine: Engine) -> None:
    if engine.backend.name != "batched":
        pytest.skip("what the batched loop does")


def test_every_kind_loads_and_changes_the_answer(engine, alone):
    assert engine.variants() == ["base", "alllin", "both", "embed", "mts"]
    assert len({tuple(ids) for ids in alone.values()}) == len(VARIANTS), "each adapter should answer its own way"


@pytest.mark.parametrize("combo", [list(c) for c in itertools.combinations(VARIANTS, 2)] + [VARIANTS],
                         ids=lambda c: ",".join(c))
def test_every_mix_answers_as_each_alone(engine, alone, combo):
    events = final_events(engine, [ChatRequest(v, PROMPT, params=GREEDY) for v in combo])
    assert [e.token_ids for e in events] == [alone[v] for v in combo]


def test_the_base_counts_only_its_own_parameters(engine, tiny_model_path):
    from transformers import AutoModelForCausalLM

    own = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_path).parameters())
    assert engine.base_parameters == own


def test_list_shows_what_each_adapter_carries(tiny_model_path, whole_adapters, tmp_path, capsys):
    from inference import main

    proc = in_process(main, ["--list", "--base", tiny_model_path, "--adapters-dir", whole_adapters,
                             "--data-dir", tmp_path, "--dtype", "float32"], capsys)
    lines = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("loaded")}
    head_mb = 49152 * 64 * 4 / 2**20  # the tiny model's vocabulary x width, fp32
    assert f"carries lm_head {head_mb:.1f} MB" in lines["mts"]
    assert f"carries embed_tokens {head_mb:.1f} MB, lm_head {head_mb:.1f} MB" in lines["both"]
    assert "carries embed_tokens.base_layer" in lines["embed"]
    assert "carries" not in lines["alllin"]


def test_another_vocabulary_is_listed_with_its_reason(engine, whole_adapters, tmp_path):
    grown = tmp_path / "grown"
    shutil.copytree(whole_adapters / "mts", grown)
    weights = load_file(grown / "adapter_model.safetensors")
    head = weights["base_model.model.lm_head.weight"]
    weights["base_model.model.lm_head.weight"] = torch.cat([head, head[:8]])  # 8 tokens added in training
    save_file(weights, grown / "adapter_model.safetensors")
    engine.config.adapter_dirs.append(tmp_path)
    try:
        info = {a.name: a for a in engine.rescan()}["grown"]
    finally:
        engine.config.adapter_dirs.remove(tmp_path)
        engine.rescan()
    assert info.status == "failed"
    assert info.reason.startswith(f"saves lm_head for a vocabulary of {head.shape[0] + 8} tokens, "
                                  f"the base has {head.shape[0]}")


def test_the_batched_loop_serves_every_kind_itself(engine):
    batched_only(engine)
    assert {a.name: a.served_by for a in engine.adapters()} == {name: "batched" for name in KINDS}


def test_rows_joining_mid_answer_keep_their_own_modules(engine, reference):
    first = ChatRequest("both", PROMPT, params=SamplingParams(max_new_tokens=30))
    later = [ChatRequest(v, p, params=GREEDY) for v, p in
             [("mts", "Hi"), ("base", "What is 2 + 2?"), ("embed", "Name three colors, please."), ("alllin", "Hi")]]
    events, answers = join_mid_answer(engine, first, later, before=3)
    assert not events[2].done and events[-1].done  # rows of other adapters and prompt lengths joined mid-answer
    assert events[-1].token_ids == tokens_alone(reference, first)
    assert answers == [tokens_alone(reference, r) for r in later]


def test_log_likelihoods_use_each_adapters_own_modules(engine, reference):
    question = [{"role": "user", "content": "Which animal barks?"}]
    choices = ["a dog", "a fish that swims in the sea"]
    scores = {}
    for variant in VARIANTS:
        ours = [c.logprob for c in engine.loglikelihood(variant, question, choices)]
        assert ours == pytest.approx([c.logprob for c in reference.loglikelihood(variant, question, choices)],
                                     abs=1e-4), variant
        scores[variant] = tuple(round(x, 3) for x in ours)
    assert len(set(scores.values())) == len(VARIANTS), "each adapter's modules should change the scores"


def test_unloading_frees_the_adapters_own_modules(engine, alone):
    batched_only(engine)
    head_mb = 49152 * 64 * 4 / 2**20  # the tiny model's vocabulary x width, fp32
    embed_lora_mb = (49152 + 64) * 8 * 4 / 2**20  # r=8 LoRA on the embedding: A is vocabulary x r
    held = engine.info()["adapter_modules_mb"]
    assert held == pytest.approx(3 * head_mb + embed_lora_mb)  # mts's head, both's head and embeddings, embed's LoRA
    engine.unload_adapter("both")
    try:
        wait_for(lambda: engine.info()["adapter_modules_mb"] < held - 1.9 * head_mb, 5, "both's copies to be freed")
    finally:
        engine.load_adapter("both")
    assert tokens_alone(engine, ChatRequest("both", PROMPT, params=GREEDY)) == alone["both"]

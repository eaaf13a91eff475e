"""The batched backend answers as the reference (transformers + PEFT) does: token for token in fp32.

Both backends load the tiny random Llama and its adapters (a1-a3 plain LoRA, dora1 DoRA) in fp32.
The reference answers every row alone; the batched backend answers them mixed in one batch, joining
while others are mid-answer, with different lengths, and must give the same tokens.
"""
from __future__ import annotations

import shutil

import pytest

from models import ChatRequest, Engine, EngineConfig, SamplingParams
from models.backend import BASE_ROW, ScoreRow
from tests.helpers import final_events, join_mid_answer, tokens_alone, wait_for

PROMPTS = ["Hello there", "Tell me a story about the sea.", "What is 2 + 2?", "Name three colors."]
GREEDY = SamplingParams(max_new_tokens=16)
SAMPLED = SamplingParams(max_new_tokens=12, temperature=0.9, top_p=0.9, top_k=40, seed=5)


def load(tmp_path_factory, model, adapters, backend: str, **config) -> Engine:
    return Engine.load(EngineConfig(base=str(model), data_dir=tmp_path_factory.mktemp(backend), dtype="float32",
                                    adapter_dirs=[adapters], backend=backend, **config))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_path, tiny_adapters):
    engine = load(tmp_path_factory, tiny_model_path, tiny_adapters, "hf")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def batched(tmp_path_factory, tiny_model_path, tiny_adapters):
    engine = load(tmp_path_factory, tiny_model_path, tiny_adapters, "batched")
    yield engine
    engine.close()


def test_each_variant_alone_gives_the_reference_tokens(reference, batched):
    for variant in ["base", "a1", "a2", "a3", "dora1"]:
        request = ChatRequest(variant, PROMPTS[1], params=GREEDY)
        assert tokens_alone(batched, request) == tokens_alone(reference, request), variant
    answers = {tuple(tokens_alone(batched, ChatRequest(v, PROMPTS[1], params=GREEDY))) for v in ["base", "a1", "a2"]}
    assert len(answers) == 3


def test_a_mixed_batch_gives_each_row_its_reference_tokens(reference, batched):
    requests = [ChatRequest(v, p, params=GREEDY) for v, p in
                zip(["base", "a1", "a2", "a3", "base", "a1", "dora1"], PROMPTS * 2)]
    together = final_events(batched, requests)
    assert [e.token_ids for e in together] == [tokens_alone(reference, r) for r in requests]
    assert [e.variant for e in together] == [r.variant for r in requests]


def test_rows_with_different_max_new_tokens_end_on_their_own(reference, batched):
    lengths = [2, 7, 16]
    requests = [ChatRequest(v, PROMPTS[0], params=SamplingParams(max_new_tokens=n))
                for v, n in zip(["a1", "base", "a2"], lengths)]
    together = final_events(batched, requests)
    assert [e.token_ids for e in together] == [tokens_alone(reference, r) for r in requests]
    assert [e.stats.new_tokens for e in together] == lengths
    assert {e.stats.finish_reason for e in together} == {"length"}


def test_rows_that_join_mid_answer_give_the_reference_tokens(reference, batched):
    first = ChatRequest("a1", PROMPTS[1], params=SamplingParams(max_new_tokens=40))
    later = [ChatRequest("a2", PROMPTS[2], params=GREEDY), ChatRequest("base", PROMPTS[3], params=GREEDY)]
    events, answers = join_mid_answer(batched, first, later, before=5)
    assert not events[4].done and events[-1].done  # the first row was mid-answer when the others joined
    assert events[-1].token_ids == tokens_alone(reference, first)
    assert answers == [tokens_alone(reference, r) for r in later]


def test_log_likelihoods_equal_the_reference(reference, batched):
    question = [{"role": "user", "content": "Which animal barks?"}]
    choices = ["a dog", "a fish that swims in the sea", "a tree"]
    for variant in ["base", "a1", "a3", "dora1"]:
        ours = [c.logprob for c in batched.loglikelihood(variant, question, choices)]
        theirs = [c.logprob for c in reference.loglikelihood(variant, question, choices)]
        assert ours == pytest.approx(theirs, abs=1e-4), variant


def test_token_log_probabilities_and_alternatives_equal_the_reference(reference, batched):
    """What the API's echo + logprobs reports: each token's score and the likeliest tokens in its place."""
    ids = batched.tokenizer("Which animal barks? A dog barks at night.")["input_ids"]
    for variant in ["base", "a1", "dora1"]:
        ours, theirs = batched.token_logprobs(variant, ids, top=3), reference.token_logprobs(variant, ids, top=3)
        assert [t.token for t in ours] == ids[1:] == [t.token for t in theirs]
        assert [t.logprob for t in ours] == pytest.approx([t.logprob for t in theirs], abs=1e-4), variant
        assert [[a for a, _ in t.top] for t in ours] == [[a for a, _ in t.top] for t in theirs], variant


def test_scoring_rows_of_different_lengths_in_one_prefill_turn(reference, batched):
    """A short row sets the turn's chunk width: a long prompt's first chunk scores none of its continuation."""
    short = batched.tokenizer("Hi")["input_ids"]
    long = batched.tokenizer("Which animal barks loudly at the mailman every morning?")["input_ids"]
    dog = batched.tokenizer(" a dog", add_special_tokens=False)["input_ids"]
    rows = [ScoreRow(BASE_ROW, short, dog), ScoreRow(BASE_ROW, long, dog), ScoreRow(BASE_ROW, short[:1], long)]
    ours = batched.backend.loglikelihood(rows, None)
    assert ours == pytest.approx(reference.backend.loglikelihood(rows, None), abs=1e-4)


def test_a_seeded_row_samples_the_same_whoever_shares_its_batch(batched):
    mine = ChatRequest("a1", PROMPTS[0], params=SAMPLED)
    by_itself = tokens_alone(batched, mine)
    crowd = [ChatRequest("base", PROMPTS[1], params=GREEDY), mine,
             ChatRequest("a2", PROMPTS[2], params=SamplingParams(max_new_tokens=12, temperature=1.2, seed=9)),
             ChatRequest("a1", PROMPTS[0], params=SamplingParams(max_new_tokens=12, temperature=0.9, seed=6))]
    in_a_crowd = final_events(batched, crowd)
    assert in_a_crowd[1].token_ids == by_itself
    assert in_a_crowd[3].token_ids != by_itself, "another seed should sample otherwise"


def test_a_stop_string_ends_the_answer_before_it_on_both_backends(reference, batched):
    full = final_events(batched, [ChatRequest("a2", PROMPTS[1], params=GREEDY)])[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    params = SamplingParams(max_new_tokens=16, stop=(stop,))
    ours, theirs = (final_events(e, [ChatRequest("a2", PROMPTS[1], params=params)])[0] for e in (batched, reference))
    assert ours.text == theirs.text == full[:full.index(stop)]
    assert ours.stats.finish_reason == theirs.stats.finish_reason == "stop"


def test_loading_and_unloading_never_stops_an_answer(reference, batched, tiny_adapters):
    long = ChatRequest("a1", PROMPTS[3], params=SamplingParams(max_new_tokens=60))
    stream = batched.stream([long])
    next(stream)
    extra = batched.config.paths.adapters
    shutil.copytree(tiny_adapters / "a3", extra / "late")  # as a finished training job would
    try:
        batched.rescan()
        assert batched.generate("late", PROMPTS[0], params=GREEDY).text == reference.generate(
            "a3", PROMPTS[0], params=GREEDY).text
        batched.unload_adapter("a1")  # the running row keeps the weights it started with
        rest = list(stream)
    finally:
        shutil.rmtree(extra / "late")
        batched.rescan()
        batched.load_adapter("a1")
    assert rest[-1].done and rest[-1].token_ids == tokens_alone(reference, long)
    wait_for(lambda: batched.info()["adapters_in_memory"] == 4, 5, "the unloaded adapters' slots to be freed")

"""The batched backend on the real default model equals the reference: greedy tokens and log-likelihoods (fp32)."""
from __future__ import annotations

import pytest

from models import ChatRequest, Engine, EngineConfig, SamplingParams
from tests.helpers import answer_tokens

GREEDY = SamplingParams(max_new_tokens=24)
QUESTIONS = ["What is the capital of France?", "Name a color.", "What is 2 + 2?"]


def load(tmp_path_factory, model, adapter, backend: str) -> Engine:
    return Engine.load(EngineConfig(base=str(model), data_dir=tmp_path_factory.mktemp(backend), dtype="float32",
                                    kv_budget_mb=256, adapter_dirs=[adapter.parent], backend=backend))


@pytest.fixture(scope="module")
def pair(tmp_path_factory, default_model_path, trained_adapter):
    engines = [load(tmp_path_factory, default_model_path, trained_adapter, b) for b in ("hf", "batched")]
    yield engines
    for engine in engines:
        engine.close()


def test_greedy_answers_equal_the_reference_alone_and_mixed(pair):
    reference, batched = pair
    requests = [ChatRequest(v, q, params=GREEDY) for v, q in
                zip(["base", "pirate", "pirate", "base"], QUESTIONS + QUESTIONS[:1])]
    expected = [answer_tokens(reference, [r])[0] for r in requests]
    assert answer_tokens(batched, requests) == expected
    assert [answer_tokens(batched, [r])[0] for r in requests[:2]] == expected[:2]
    assert "Paris" in batched.tokenizer.decode(expected[0]) and "Arr" in batched.tokenizer.decode(expected[1])


def test_log_likelihoods_equal_the_reference(pair):
    reference, batched = pair
    choices = ["Paris", "London is the capital", "Arr matey! Paris be the capital of France, arr!"]
    for variant in ["base", "pirate"]:
        ours = [c.logprob for c in batched.loglikelihood(variant, QUESTIONS[0], choices)]
        theirs = [c.logprob for c in reference.loglikelihood(variant, QUESTIONS[0], choices)]
        assert ours == pytest.approx(theirs, abs=1e-4), variant

"""Serving with the batched backend: rows beyond the batch wait and hear their place, the KV budget sets
how long a conversation may be, the Models tab says which path serves each adapter."""
from __future__ import annotations

import pytest

from models import ArenaError, ChatRequest, Engine, EngineConfig, SamplingParams

GREEDY = SamplingParams(max_new_tokens=16)


def load(tmp_path_factory, model, adapters, **config) -> Engine:
    return Engine.load(EngineConfig(base=str(model), data_dir=tmp_path_factory.mktemp("batched"), dtype="float32",
                                    adapter_dirs=[adapters], **config))


def test_rows_beyond_the_batch_wait_and_hear_their_place(tmp_path_factory, tiny_model_path, tiny_adapters):
    engine = load(tmp_path_factory, tiny_model_path, tiny_adapters, max_batch=2)
    try:
        requests = [ChatRequest(v, "Hello there", params=GREEDY) for v in ["base", "a1", "a2", "a3"]]
        events = list(engine.stream(requests))
    finally:
        engine.close()
    places: dict[int, int] = {}
    for event in events:
        if event.queue_position:
            places.setdefault(event.index, event.queue_position)
    assert places == {2: 1, 3: 2}  # rows 0 and 1 ran at once; 2 and 3 waited, 2 first
    done = {e.index: e for e in events if e.done}
    assert sorted(done) == [0, 1, 2, 3] and done[3].stats.queue_seconds > 0


def test_the_kv_budget_sets_how_long_a_conversation_may_be(tmp_path_factory, tiny_model_path, tiny_adapters):
    engine = load(tmp_path_factory, tiny_model_path, tiny_adapters, kv_budget_mb=1, max_batch=4)
    try:
        assert engine.info()["kv_cache"].startswith("4 rows of up to 512 tokens")
        with pytest.raises(ArenaError, match=r"^the conversation is \d+ tokens, this server answers up to 512"):
            engine.generate("base", "word " * 600)
        answer = engine.generate("base", "word " * 400, params=SamplingParams(max_new_tokens=200))
        assert answer.stats.prompt_tokens + answer.stats.new_tokens == 512  # answered to the end of its slot
    finally:
        engine.close()


def test_the_models_tab_says_which_path_serves_each_adapter(tiny_engine):
    served = {a.name: a.served_by for a in tiny_engine.adapters()}
    assert served == {"a1": "batched", "a2": "batched", "a3": "batched",
                      "dora1": "reference: DoRA is served by the reference path"}


def test_a_kv_cache_larger_than_the_machine_is_one_line(tmp_path_factory, tiny_model_path, tiny_adapters):
    # 200 TB per layer: more than any address space, so it fails at once whatever the memory overcommit policy
    with pytest.raises(ArenaError, match=r"^cannot allocate the KV cache \(\d+ MB for 200000000 rows of up to 8192 "
                                         r"tokens\): lower --kv-budget-mb or --max-batch \(.*\)$"):
        load(tmp_path_factory, tiny_model_path, tiny_adapters, kv_budget_mb=10**12, max_batch=200_000_000)


def test_a_long_prompt_is_prefilled_in_chunks_while_others_stream(tiny_engine):
    """Each loop turn prefills one chunk (256 tokens here) and then decodes a step for the rows answering."""
    streaming = ChatRequest("a1", "Hello there", params=SamplingParams(max_new_tokens=60))
    long = ChatRequest("a2", "word " * 2000, params=SamplingParams(max_new_tokens=4))
    before_long: list[str] = []
    for event in tiny_engine.stream([streaming, long]):
        if event.index == 1:
            break
        before_long.append(event.delta)
    chunks = 2000 // 256
    assert sum(bool(d) for d in before_long) >= chunks // 2, "the streaming row stalled behind the long prompt"

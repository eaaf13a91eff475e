"""Engine behaviour on a tiny random Llama: variants, batching, concurrency, cancel."""
from __future__ import annotations

import threading
import time

import pytest

from models import ArenaError, Engine, EngineConfig, SamplingParams
from tests.helpers import wait_for

GREEDY = SamplingParams(max_new_tokens=12)


def test_loads_every_compatible_adapter(tiny_engine):
    assert set(tiny_engine.variants()) == {"base", "a1", "a2", "a3", "dora1"}


def test_compare_equals_generate_for_each_variant(tiny_engine):
    variants = ["base", "a1", "a2", "a3"]
    together = tiny_engine.compare(variants, "Hello there", params=GREEDY)
    alone = [tiny_engine.generate(v, "Hello there", params=GREEDY) for v in variants]
    assert [a.text for a in together] == [a.text for a in alone]
    assert len({a.text for a in alone}) == 4, "adapters should answer differently from each other"


def test_compare_with_different_histories_per_column(tiny_engine):
    from models import ChatRequest

    short = [{"role": "user", "content": "Hi"}]
    long = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Tell me about the sea."}]
    events = list(tiny_engine.stream([ChatRequest("a1", short, params=GREEDY), ChatRequest("base", long, params=GREEDY)]))
    final = {e.index: e.text for e in events if e.done}
    assert final[0] == tiny_engine.generate("a1", short, params=GREEDY).text
    assert final[1] == tiny_engine.generate("base", long, params=GREEDY).text


def test_dora_adapter_falls_back_to_one_at_a_time(tiny_engine):
    together = tiny_engine.compare(["base", "dora1", "a1"], "Hello there", params=GREEDY)
    assert together[1].text == tiny_engine.generate("dora1", "Hello there", params=GREEDY).text
    assert together[0].text == tiny_engine.generate("base", "Hello there", params=GREEDY).text
    assert together[1].text != together[0].text


def test_stream_yields_pieces_then_stats(tiny_engine):
    events = list(tiny_engine.generate_stream("a2", "Hello", params=GREEDY))
    assert events[-1].done and not any(e.done for e in events[:-1])
    pieces = "".join(e.delta for e in events)
    assert pieces == events[-1].text
    stats = events[-1].stats
    assert stats.new_tokens == 12 and stats.finish_reason == "length"
    assert stats.prompt_tokens > 5 and stats.ttft_seconds > 0 and stats.tokens_per_second > 0


def test_unknown_and_failed_variants_are_named(tiny_engine):
    with pytest.raises(ArenaError, match="unknown variant 'nope'"):
        tiny_engine.generate("nope", "Hi")
    with pytest.raises(ArenaError, match="last message must be a non-empty user message"):
        tiny_engine.generate("base", [{"role": "user", "content": "  "}])
    with pytest.raises(ArenaError, match="message 1 has role 'robot'"):
        tiny_engine.generate("base", [{"role": "robot", "content": "hi"}])


def test_eight_threads_each_get_their_own_variant(tiny_engine):
    variants = ["base", "a1", "a2", "a3"] * 2
    expected = {v: tiny_engine.generate(v, "Tell me a story", params=GREEDY).text for v in set(variants)}
    results: dict[int, str] = {}
    barrier = threading.Barrier(len(variants))

    def call(i: int, variant: str) -> None:
        barrier.wait()
        results[i] = tiny_engine.generate(variant, "Tell me a story", params=GREEDY).text

    threads = [threading.Thread(target=call, args=(i, v)) for i, v in enumerate(variants)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [results[i] for i in range(len(variants))] == [expected[v] for v in variants]


def test_cancel_ends_a_long_generation_within_a_second(tiny_engine):
    cancel = threading.Event()
    stream = tiny_engine.generate_stream("a1", "Go on forever", params=SamplingParams(max_new_tokens=8000), cancel=cancel)
    next(stream)  # it has started
    cancelled_at = time.perf_counter()
    cancel.set()
    last = list(stream)[-1]
    assert time.perf_counter() - cancelled_at < 1.0
    assert last.done and last.stats.finish_reason == "cancelled"
    assert last.stats.new_tokens < 8000
    # The device is free again for the next caller.
    assert tiny_engine.generate("base", "Hi", params=GREEDY).stats.new_tokens == 12


def test_closing_a_stream_frees_the_device(tiny_engine):
    stream = tiny_engine.generate_stream("a1", "Go on", params=SamplingParams(max_new_tokens=8000))
    next(stream)
    stream.close()  # as when a browser tab disconnects
    start = time.perf_counter()
    tiny_engine.generate("base", "Hi", params=GREEDY)
    assert time.perf_counter() - start < 5


@pytest.fixture(scope="module", params=["hf", "batched"])
def one_lane(request, tmp_path_factory, tiny_model_path, tiny_adapters):
    """An engine where one long answer keeps every other request waiting: the reference backend holds
    the device per call; the batched backend is given room for one row."""
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=tmp_path_factory.mktemp("lane"),
                                      adapter_dirs=[tiny_adapters], backend=request.param, max_batch=1))
    yield engine
    engine.close()


def test_a_waiting_caller_that_gives_up_leaves_the_line(one_lane):
    long_call = one_lane.generate_stream("a1", "Go on", params=SamplingParams(max_new_tokens=8000))
    next(long_call)  # holds the device
    give_up = threading.Event()
    waiting = one_lane.generate_stream("a2", "Hi", params=GREEDY, cancel=give_up)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("events", list(waiting)))
    thread.start()
    wait_for(lambda: one_lane.waiting == 1, 5, "the second request to wait")
    give_up.set()
    thread.join(2)
    assert result["events"][0].queue_position == 1  # the page can say where it stands
    assert result["events"][-1].stats.finish_reason == "cancelled"
    assert one_lane.waiting == 0
    long_call.close()


def _queue_behind_a_long_call(engine, first, second):
    """Hold the device with a long answer, call `first` then `second` (each waits its turn if the backend
    makes it wait), then let them run."""
    long_call = engine.generate_stream("a1", "Go on", params=SamplingParams(max_new_tokens=8000))
    next(long_call)
    results = {}

    def run(key, fn):
        try:
            results[key] = fn()
        except ArenaError as exc:
            results[key] = exc

    threads = []
    for key, fn in (("first", first), ("second", second)):
        before = engine.waiting
        threads.append(threading.Thread(target=run, args=(key, fn)))
        threads[-1].start()
        wait_for(lambda: key in results or engine.waiting > before, 5, f"'{key}' to wait or finish")
    long_call.close()
    for thread in threads:
        thread.join(30)
    return results


def test_a_request_waiting_during_a_reload_gets_its_answer(one_lane):
    """A finished training job reloads its adapter while someone's Compare request waits for it."""
    expected = one_lane.generate("a2", "Hi", params=GREEDY).text
    results = _queue_behind_a_long_call(
        one_lane,
        lambda: one_lane.reload_adapter("a2"),
        lambda: one_lane.generate("a2", "Hi", params=GREEDY).text,
    )
    assert results["second"] == expected
    assert "a2" in one_lane.variants()


def test_a_request_waiting_during_an_unload_names_the_adapter(one_lane):
    unload = lambda: one_lane.unload_adapter("a3")  # noqa: E731
    answer = lambda: one_lane.generate("a3", "Hi", params=GREEDY).text  # noqa: E731
    # The reference queues an unload behind the device like any call; the batched loop unloads between
    # two steps, so there the request must be the one already waiting.
    first, second = (unload, answer) if one_lane.backend.name == "hf" else (answer, unload)
    results = _queue_behind_a_long_call(one_lane, first, second)
    error = results["second" if one_lane.backend.name == "hf" else "first"]
    try:
        assert isinstance(error, ArenaError)
        assert "adapter 'a3' was unloaded while this request waited" in str(error)
    finally:
        one_lane.load_adapter("a3")
    assert one_lane.generate("a3", "Hi", params=GREEDY).text


def test_sampling_with_a_seed_repeats(tiny_engine):
    params = SamplingParams(max_new_tokens=10, temperature=0.9, top_p=0.9, top_k=40, seed=123)
    first = tiny_engine.generate("a1", "Hi", params=params).text
    assert tiny_engine.generate("a1", "Hi", params=params).text == first


def test_bad_sampling_values_are_named():
    with pytest.raises(ArenaError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ArenaError, match="top_p"):
        SamplingParams(top_p=0)


def test_unload_reload_and_retrain_under_the_same_name(tmp_path, tiny_model_path, tiny_adapters, copy_adapter):
    from tests.helpers import make_random_adapter

    adapters = tmp_path / "adapters"
    copy_adapter(tiny_adapters / "a1", adapters / "mine")
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=tmp_path / "data", adapter_dirs=[adapters]))
    before = engine.generate("mine", "Hi", params=GREEDY).text
    engine.unload_adapter("mine")
    assert engine.variants() == ["base"] and engine.info()["adapters_in_memory"] == 0  # weights freed
    with pytest.raises(ArenaError, match="cannot answer"):
        engine.generate("mine", "Hi")
    # "retrain": new weights under the same name, then reload
    import shutil
    shutil.rmtree(adapters / "mine")
    make_random_adapter(tiny_model_path, adapters / "mine", seed=99)
    engine.reload_adapter("mine")
    assert engine.generate("mine", "Hi", params=GREEDY).text != before


def test_rescan_finds_new_adapters_and_delete_moves_to_trash(tmp_path, tiny_model_path, tiny_adapters, copy_adapter):
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=tmp_path))
    assert engine.variants() == ["base"]
    copy_adapter(tiny_adapters / "a2", tmp_path / "adapters" / "fresh")
    engine.rescan()
    assert engine.variants() == ["base", "fresh"]
    trash = engine.delete_adapter("fresh")
    assert trash.parent == tmp_path / "trash" and (trash / "adapter_config.json").is_file()
    assert engine.variants() == ["base"] and not (tmp_path / "adapters" / "fresh").exists()


def test_quantization_without_cuda_says_so_and_loads(tmp_path, tiny_model_path):
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=tmp_path, quantization="4bit"))
    assert engine.info()["quantization"] == "none"
    assert any("needs CUDA" in note for note in engine.info()["notes"])
    assert engine.generate("base", "Hi", params=SamplingParams(max_new_tokens=3)).stats.new_tokens == 3


def test_unknown_hub_model_offline_is_one_line(tmp_path):
    with pytest.raises(ArenaError) as error:
        Engine.load(EngineConfig(base="nobody/no-such-model", data_dir=tmp_path))
    assert "nobody/no-such-model" in str(error.value) and "\n" not in str(error.value)


def test_missing_local_folder_is_named(tmp_path):
    with pytest.raises(ArenaError, match="neither a local model folder nor a Hub id"):
        Engine.load(EngineConfig(base=str(tmp_path / "nothing-here"), data_dir=tmp_path))

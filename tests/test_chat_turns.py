"""What a Compare or Arena column says while it waits and answers (chat.turns.stats_line), on the real tiny
engine: a turn queued behind another one hears its place in line, then how long it waited. The reference backend
answers one call at a time, so a second turn waits there; the batched backend's waiting places (rows beyond its
slots) are tested in tests/test_batched_serving.py."""
from __future__ import annotations

import threading

import pytest

from chat.turns import Column, answer_turn, stats_line
from kernel.config import SamplingParams
from models import Engine, EngineConfig
from models.streaming import GenerationStats


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory, tiny_model_path, tiny_adapters):
    engine = Engine.load(EngineConfig(base=str(tiny_model_path), data_dir=tmp_path_factory.mktemp("turns"),
                                      adapter_dirs=[tiny_adapters], backend="hf"))
    yield engine
    engine.close()


def test_a_turn_behind_another_shows_its_place_then_the_wait_in_its_stats(one_at_a_time):
    long = [Column("base", params=SamplingParams(max_new_tokens=400))]
    first_token = threading.Event()

    def first_turn():
        for columns in answer_turn(one_at_a_time, long, "Tell me a long story."):
            if columns[0].history[-1]["content"]:
                first_token.set()

    runner = threading.Thread(target=first_turn)
    runner.start()
    assert first_token.wait(120), "the first turn never started answering"
    lines = []
    for columns in answer_turn(one_at_a_time, [Column("a1", params=SamplingParams(max_new_tokens=4))], "Hi"):
        lines.append(stats_line(columns[0]))
    runner.join(120)
    assert any(line.startswith("waiting for room on the device: 1st in line") for line in lines), lines[:3]
    assert lines[-1].startswith("waited ") and "first token" in lines[-1] and "s in all" in lines[-1]


def test_stats_lines_while_answering_and_after():
    column = Column("base", started=1.0)
    assert stats_line(column).startswith("answering… ")
    column.queue_position, column.queue_seconds = 2, 3.4
    assert stats_line(column) == "waiting for room on the device: 2nd in line · 3 s so far"
    column.queue_position = 0
    column.stats = GenerationStats(new_tokens=96, queue_seconds=86.0, ttft_seconds=2.93, total_seconds=10.0,
                                   tokens_per_second=10.0, finish_reason="length")
    assert stats_line(column) == ("waited 86.0 s · first token 2.93 s · 96 tokens · 10.0 tok/s · 96.0 s in all "
                                  "· hit max tokens")
    assert stats_line(Column("base")) == ""
    column.stats = GenerationStats(finish_reason="cancelled")
    assert stats_line(column) == "stopped"
